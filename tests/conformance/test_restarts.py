"""Starts that Nomad repeats, and tasks it could not recover, in an allocation of two VMs.

When the plugin dies under StartTask, Nomad's task runner relaunches it and calls StartTask
again with the same task; when it dies under a running task, that task's runner recovers
it. The two happen independently, so a repeated start can come before its sibling's
RecoverTask. When RecoverTask fails, the task runner calls DestroyTask(force) for a task
the plugin does not know (Nomad: client/allocrunner/taskrunner/task_runner.go).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import _live_processes, live_supervisor_pids, until
from tests.conformance.nomadsim import NomadSim, NomadSimError
from tests.conformance.test_lifecycle import launch
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

TASK = """    task "{name}" {{
      driver = "tart"
      config {{
        url = "{image}"
        ssh_user = "admin"
        ssh_password = "admin"
      }}
    }}
"""
TWO_TASKS = (
    'job "two" {\n  group "g" {\n'
    + TASK.format(name="a", image=LINUX_IMAGE)
    + TASK.format(name="b", image=LINUX_IMAGE)
    + "  }\n}\n"
)


class Alloc:
    """An allocation with two tart tasks, a and b, sharing one allocation directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.id = str(uuid.uuid4())
        self.dir = tempfile.mkdtemp(prefix="alloc-", dir=tmp_path)
        self.vm = {"a": f"nomad-{self.id}", "b": f"nomad-{self.id}-b"}

    async def start(self, sim: NomadSim, name: str, task_id: str | None = None) -> dict[str, Any]:
        task: dict[str, Any] = {
            "alloc_id": self.id,
            "alloc_dir": self.dir,
            "resources": {"cpu_shares": 2000, "memory_mb": 2048, "cpuset_cpus": "0,1"},
        }
        if task_id is not None:
            task["id"] = task_id
        return await sim.call(
            "start_task", task=task, job_hcl=TWO_TASKS, task_name=name, create_alloc_dir=True
        )


def tart_commands(sub: str, vm: str) -> list[int]:
    """Live ``tart <sub> ... <vm>`` processes."""
    found = []
    for pid in _live_processes(vm):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [os.path.basename(a.decode()) for a in argv]
        if "tart" in words and sub in words and vm in words:
            found.append(pid)
    return found


async def test_a_start_cut_short_is_repeated_without_touching_its_sibling(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    alloc = Alloc(tmp_path)
    await launch(sim, fake_tart, tmp_path)
    a = await alloc.start(sim, "a")
    a_run = fake_tart.running_vms()[alloc.vm["a"]]
    fake_tart.set_knobs(alloc.vm["b"], clone_seconds=60)  # b's first clone is slow
    b_id = f"{alloc.id}/b/{uuid.uuid4().hex[:8]}"
    async with trio.open_nursery() as nursery:

        async def start_b() -> None:
            with pytest.raises(NomadSimError):  # the plugin dies under it
                await alloc.start(sim, "b", task_id=b_id)

        nursery.start_soon(start_b)
        await until(lambda: tart_commands("clone", alloc.vm["b"]))
        await sim.call("sigkill")
    earlier_clone = tart_commands("clone", alloc.vm["b"])
    assert earlier_clone, "the clone outlives the plugin, as on a Mac"
    fake_tart.clear_knobs()

    # Nomad relaunches the plugin; b's task runner repeats StartTask before a's task runner
    # has recovered a.
    await launch(sim, fake_tart, tmp_path)
    b = await alloc.start(sim, "b", task_id=b_id)
    assert not tart_commands("clone", alloc.vm["b"]), "the earlier start's clone was ended"
    running = fake_tart.running_vms()
    assert running.get(alloc.vm["a"]) == a_run, "a's VM was never touched"
    assert set(running) == {alloc.vm["a"], alloc.vm["b"]}
    assert len([c for c in fake_tart.calls_of("run") if c[1] == alloc.vm["a"]]) == 1

    await sim.call("recover_task", handle=a["handle"], drop_driver_config=True)
    assert fake_tart.running_vms()[alloc.vm["a"]] == a_run, "a's VM was never touched"
    for task in (a, b):
        await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
        await sim.call("destroy_task", task_id=task["task_id"])
    assert fake_tart.tart("list", "-q", "--source", "local").stdout == ""


async def test_a_task_that_could_not_be_recovered_loses_its_vm_at_once(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    alloc = Alloc(tmp_path)
    await launch(sim, fake_tart, tmp_path)
    a = await alloc.start(sim, "a")
    b = await alloc.start(sim, "b")
    a_run = fake_tart.running_vms()[alloc.vm["a"]]
    await sim.call("sigkill")
    # b's VM and its supervisor die without a word, as in a host crash.
    for pid in _live_processes(alloc.vm["b"]):
        os.kill(pid, signal.SIGKILL)
    await until(lambda: alloc.vm["b"] not in fake_tart.running_vms())

    await launch(sim, fake_tart, tmp_path)
    with pytest.raises(NomadSimError, match="is gone"):
        await sim.call("recover_task", handle=b["handle"], drop_driver_config=True)
    await sim.call("destroy_task", task_id=b["task_id"], force=True)
    assert not fake_tart.vm_dir(alloc.vm["b"]).exists(), "removed now, not by the reconciler"
    assert fake_tart.running_vms() == {alloc.vm["a"]: a_run}

    # A task whose VM never existed: nothing to do, and the sibling's VM stays.
    await sim.call("destroy_task", task_id=f"{alloc.id}/c/0123abcd", force=True)
    await sim.call("recover_task", handle=a["handle"], drop_driver_config=True)
    assert fake_tart.running_vms() == {alloc.vm["a"]: a_run}
    await sim.call("stop_task", task_id=a["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=a["task_id"])
    assert fake_tart.tart("list", "-q", "--source", "local").stdout == ""


#: The previous release started supervisors as ``python -m tart_trio._supervisor``; this
#: package makes a process with that argv, served by today's supervisor.
LEGACY_SUPERVISOR = """\
import sys

sys.path.remove({legacy!r})
for name in [m for m in sys.modules if m == "tart_trio" or m.startswith("tart_trio.")]:
    del sys.modules[name]
from tart_trio._main import main

sys.argv[1:1] = ["supervise"]
main()
"""


async def test_a_supervisor_of_the_previous_release_is_ended_by_a_repeated_start(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    alloc = Alloc(tmp_path)
    vm = alloc.vm["a"]
    legacy = tmp_path / "legacy"
    (legacy / "tart_trio").mkdir(parents=True)
    (legacy / "tart_trio" / "__init__.py").write_text("")
    (legacy / "tart_trio" / "_supervisor.py").write_text(
        LEGACY_SUPERVISOR.format(legacy=str(legacy))
    )
    runtime = tmp_path / "legacy-runtime"
    runtime.mkdir(mode=0o700)
    assert fake_tart.tart("clone", LINUX_IMAGE, vm).returncode == 0
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "tart_trio._supervisor",
            *("--status-file", str(runtime / "status.json")),
            *("--pid-file", str(runtime / "tart-run.pid")),
            *("--log-file", str(runtime / "tart-run.log")),
            *("--owner", f"{alloc.id}/a"),
            "--",
            str(fake_tart.bin_dir / "tart"),
            *("run", vm, "--no-graphics"),
        ],
        env={**fake_tart.env(), "PYTHONPATH": str(legacy)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    supervisor = int(started.stdout.split()[0])
    await until(lambda: vm in fake_tart.running_vms())
    old_run = fake_tart.running_vms()[vm]
    assert supervisor in live_supervisor_pids(), "recognised by its old argv"

    # The upgraded plugin starts the task again: the old supervisor and its VM give way.
    await launch(sim, fake_tart, tmp_path)
    a = await alloc.start(sim, "a")
    assert supervisor not in live_supervisor_pids()
    assert fake_tart.running_vms()[vm] != old_run
    await sim.call("stop_task", task_id=a["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=a["task_id"])
    assert fake_tart.tart("list", "-q", "--source", "local").stdout == ""
