"""VMs outlive the plugin: RecoverTask reattaches and never runs anything twice."""

from __future__ import annotations

import base64
import os
import re
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from tart_trio._task.state import decode_state, encode_state
from tests.conformance.conftest import (
    delivered_once_or_one_write_twice,
    unchanged_for,
    until,
)
from tests.conformance.nomadsim import NomadSim, NomadSimError, SimStream
from tests.conformance.test_lifecycle import _variant, collect, launch, start
from tests.faketart.fixtures import FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

SEQ = re.compile(r"seq=(\d+)")


async def relaunch(sim: NomadSim, fake: FakeTart, tmp_path: Path) -> None:
    """Nomad's agent stop: SIGKILL the plugin; the next agent launches a new one."""
    await sim.call("sigkill")
    await launch(sim, fake, tmp_path)


def seqs(path: Path) -> list[int]:
    return [int(m.group(1)) for m in SEQ.finditer(path.read_text(errors="replace"))]


def guest_log_delivered(log: Path, guest: list[str]) -> tuple[str, str]:
    """The task's log from the first guest log line in it on (after ``log stream``'s
    header), and the guest's log lines from that one to the last delivered."""
    got = log.read_text(errors="replace")
    found = SEQ.search(got)
    assert found is not None, "guest log lines were delivered"
    got = got[got.rfind("\n", 0, found.start()) + 1 :]
    lines = [f"{text}\n" for text in guest]
    first = lines.index(got[: got.index("\n") + 1])
    last = lines.index(got[got.rindex("\n", 0, len(got) - 1) + 1 :], first)
    return got, "".join(lines[first : last + 1])


async def test_running_vms_are_reattached_with_logs_intact(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.set_knobs("nomad-*", log_rate=20)
    await launch(sim, fake_tart, tmp_path)
    tasks = [await start(sim, _variant("")) for _ in range(2)]
    runs_before = fake_tart.running_vms()
    logs = [Path(t["stdout_log"]) for t in tasks]
    for log in logs:
        await until(lambda log=log: len(seqs(log)) >= 5)

    await sim.call("sigkill")
    vms = [f"nomad-{t['task_config']['alloc_id']}" for t in tasks]
    marks = [len(fake_tart.guest_log(vm)) for vm in vms]
    await until(
        lambda: all(
            len(fake_tart.guest_log(vm)) >= m + 20 for vm, m in zip(vms, marks, strict=True)
        )
    )
    await launch(sim, fake_tart, tmp_path)
    for t in tasks:
        await sim.call("recover_task", handle=t["handle"], drop_driver_config=True)

    assert fake_tart.running_vms() == runs_before, "the same tart run processes"
    assert len(fake_tart.calls_of("run")) == 2 and len(fake_tart.calls_of("clone")) == 2
    for vm, log in zip(vms, logs, strict=True):
        latest = SEQ.findall(fake_tart.guest_log(vm)[-1])[-1]
        await until(lambda log=log, latest=latest: seqs(log) and seqs(log)[-1] >= int(latest))
        # The kill may fall between a write to the FIFO and saving the cursor after it:
        # that one write (at most PIPE_BUF bytes) may then come twice, nothing else.
        got, expected = guest_log_delivered(log, fake_tart.guest_log(vm))
        assert delivered_once_or_one_write_twice(got, expected), "no gap"
    for t in tasks:
        await sim.call("stop_task", task_id=t["task_id"], timeout_seconds=5)
        assert (await sim.call("wait_task", task_id=t["task_id"]))["result"]["exit_code"] == 0
        await sim.call("destroy_task", task_id=t["task_id"])
    assert fake_tart.tart("list", "-q", "--source", "local").stdout == ""


async def test_a_plugin_killed_while_logmon_holds_guest_logs_back_repeats_and_loses_no_line(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """The FIFO is full and the plugin waits with lines in memory and a line maybe half
    written: the restart replays from exactly what logmon has."""
    fake_tart.set_knobs("nomad-*", log_rate=200)
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, _variant(""))
    vm = f"nomad-{task['task_config']['alloc_id']}"
    log = Path(task["stdout_log"])
    await until(lambda: len(seqs(log)) >= 5)
    await sim.call("logmon", task_id=task["task_id"], stream="stdout", state="paused")
    paused_at = len(fake_tart.guest_log(vm))
    await until(lambda: len(fake_tart.guest_log(vm)) >= paused_at + 1500, 60)  # > the FIFO
    runtime = Path(decode_state(base64.b64decode(task["handle"]["driver_state"])).runtime_dir)
    await until(unchanged_for(runtime / "log.cursor", 1.0))  # the plugin waits for logmon
    await sim.call("sigkill")
    await sim.call("logmon", task_id=task["task_id"], stream="stdout", state="running")
    await launch(sim, fake_tart, tmp_path)
    await sim.call("recover_task", handle=task["handle"], drop_driver_config=True)
    latest = int(SEQ.findall(fake_tart.guest_log(vm)[-1])[-1])
    await until(lambda: seqs(log) and seqs(log)[-1] >= latest, 60)
    await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
    got, expected = guest_log_delivered(log, fake_tart.guest_log(vm))
    await sim.call("destroy_task", task_id=task["task_id"])
    assert got == expected, "no gap and no repeat"


async def test_exits_while_the_plugin_was_down_are_reported(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    shut, crashed = [await start(sim, _variant("")) for _ in range(2)]
    await sim.call("sigkill")
    ip = decode_state(base64.b64decode(shut["handle"]["driver_state"])).ip
    fake_tart.ssh(ip, "sudo shutdown -h now")
    crash_vm = f"nomad-{crashed['task_config']['alloc_id']}"
    fake_tart.set_knobs(crash_vm, crash_after=0.1, crash_exit_code=7)
    await until(lambda: fake_tart.running_vms() == {})
    await launch(sim, fake_tart, tmp_path)
    for t in (shut, crashed):
        await sim.call("recover_task", handle=t["handle"], drop_driver_config=True)
    with trio.fail_after(10):
        assert (await sim.call("wait_task", task_id=shut["task_id"]))["result"]["exit_code"] == 0
        assert (await sim.call("wait_task", task_id=crashed["task_id"]))["result"]["exit_code"] == 7
    assert len(fake_tart.calls_of("run")) == 2, "nothing ran twice"
    for t in (shut, crashed):
        await sim.call("destroy_task", task_id=t["task_id"])
    assert fake_tart.tart("list", "-q", "--source", "local").stdout == ""


async def test_recover_is_idempotent_and_safe_concurrently(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, _variant(""))
    await sim.call("recover_task", handle=task["handle"])  # already tracked: no-op
    await relaunch(sim, fake_tart, tmp_path)
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(
                lambda: sim.call("recover_task", handle=task["handle"], drop_driver_config=True)
            )
    status = await sim.call("inspect_task", task_id=task["task_id"])
    assert status["task"]["state"] == "RUNNING"
    assert len(fake_tart.calls_of("run")) == 1
    await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=task["task_id"])


async def test_a_vanished_vm_is_an_error(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, _variant(""))
    await sim.call("sigkill")
    state = decode_state(base64.b64decode(task["handle"]["driver_state"]))
    os.kill(state.supervisor_pid, signal.SIGKILL)  # the supervisor dies with the VM
    fake_tart.tart("stop", state.vm_name, "--timeout", "0")
    assert not Path(state.status_file).exists()
    await launch(sim, fake_tart, tmp_path)
    with pytest.raises(NomadSimError) as caught:
        await sim.call("recover_task", handle=task["handle"], drop_driver_config=True)
    assert "is gone" in caught.value.message
    fake_tart.tart("delete", state.vm_name)


async def test_a_changed_host_key_is_refused(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, _variant(""))
    await relaunch(sim, fake_tart, tmp_path)
    state = decode_state(base64.b64decode(task["handle"]["driver_state"]))
    forged = msgspec.structs.replace(
        state,
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJzQx8bW0Sxh3X8Yh8cOcYm1nXb5B9ChF1mH2Q0h6y9T",
    )
    handle = dict(task["handle"], driver_state=base64.b64encode(encode_state(forged)).decode())
    events: list[dict[str, Any]] = []
    stream: SimStream = await sim.open_stream("task_events")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, stream, events)
        await sim.call("recover_task", handle=handle, drop_driver_config=True)
        await until(lambda: any("host key" in e["message"] for e in events))
        nursery.cancel_scope.cancel()
    await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5, signal="SIGKILL")
    await sim.call("destroy_task", task_id=task["task_id"])


async def test_reattach_after_an_agent_crash(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, _variant(""))
    plugin = await sim.call("forget")
    await sim.call(
        "reattach",
        addr=plugin["addr"],
        pid=plugin["pid"],
        network=plugin["network"],
        log_file=str(tmp_path / "reattached.log"),
    )
    assert (await sim.call("plugin_info"))["name"] == "tart"
    await sim.call("recover_task", handle=task["handle"])
    await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
    assert (await sim.call("wait_task", task_id=task["task_id"]))["result"]["exit_code"] == 0
    await sim.call("destroy_task", task_id=task["task_id"])
