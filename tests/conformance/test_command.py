"""CI jobs: a fresh VM runs one command, and the task ends with its exit code."""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tart_trio._task.state import decode_state
from tests.conformance.conftest import (
    delivered_once_or_one_write_twice,
    launch_args,
    plugin_log,
    unchanged_for,
    until,
)
from tests.conformance.nomadsim import NomadSim
from tests.conformance.test_exec import ended_cleanly, open_session
from tests.conformance.test_lifecycle import _variant, collect, vm_names
from tests.faketart.fixtures import LINUX_IMAGE, MACOS_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

PLUGIN_CONFIG = 'plugin "nomad-driver-tart" {\n  config {\n    boot_timeout = "30s"\n  }\n}\n'


def hcl_string(text: str) -> str:
    """An HCL string literal holding ``text`` exactly."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("${", "$${").replace("%{", "%%{") + '"'


def job(
    script: str,
    *args: str,
    image: str = MACOS_IMAGE,
    task: str = "build",
    extra: str = "",
    options: str = "",
) -> str:
    argv = ", ".join(hcl_string(a) for a in ["-c", script, "job", *args])
    return (
        f'job "ci" {{\n  group "g" {{\n    task "{task}" {{\n      driver = "tart"\n{extra}\n'
        f'      config {{\n        url = "{image}"\n        ssh_user = "admin"\n'
        f'        ssh_password = "admin"\n        command = "/bin/sh"\n'
        f"        args = [{argv}]\n{options}\n      }}\n    }}\n  }}\n}}\n"
    )


async def launch(sim: NomadSim, fake: FakeTart, tmp_path: Path) -> Path:
    log = tmp_path / "plugin.log"
    await sim.call("launch", **launch_args(log, **fake.env()))
    await sim.call("set_config", hcl=PLUGIN_CONFIG, with_nomad_config=True)
    return log


async def start(sim: NomadSim, job_hcl: str, **task: Any) -> dict[str, Any]:
    spec = {
        "alloc_id": str(uuid.uuid4()),
        "env": {},
        "resources": {"cpu_shares": 4000, "memory_mb": 4096, "cpuset_cpus": "0,1,2,3"},
        **task,
    }
    return await sim.call("start_task", task=spec, job_hcl=job_hcl, create_alloc_dir=True)


SECRET_ENV, SECRET_TEMPLATE = "env-S3CRET-4711", "tmpl-S3CRET-4712"

BUILD = r"""
out="$NOMAD_ALLOC_DIR/data"
printf '%s\n' "$FROM_ENV_BLOCK" "$FROM_TEMPLATE" "$NOMAD_ALLOC_ID" "$NOMAD_TASK_DIR" \
  > "$out/env.txt"
while [ ! -e "$out/go" ]; do sleep 0.1; done
printf '<%s>\n' "$@"
cat "$NOMAD_TASK_DIR/input.txt"
echo "built in $(pwd)" > "$out/result.txt"
echo "to stderr" >&2
exit 3
"""

HOOKS = f"""
      env {{
        FROM_ENV_BLOCK = "{SECRET_ENV}"
      }}
      template {{
        data        = "FROM_TEMPLATE={SECRET_TEMPLATE}\\n"
        destination = "secrets/build.env"
        env         = true
      }}
      template {{
        data        = "input from local/\\n"
        destination = "local/input.txt"
      }}
"""


def guest_jobs(fake: FakeTart, started: dict[str, Any]) -> Path:
    """The command's job directories as the guest sees them in its home (~/.nomad-tart)."""
    return guest_home(fake, started) / ".nomad-tart"


def guest_home(fake: FakeTart, started: dict[str, Any]) -> Path:
    """The guest user's home directory (the fake keeps it in the VM's bundle)."""
    vm = f"nomad-{started['task_config']['alloc_id']}"
    return fake.vm_dir(vm) / ".faketart" / "home"


def argv_on_host() -> str:
    """Every process's argv on this machine (the fake's guests are host processes too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return "\n".join(found)


async def test_a_command_gets_its_args_env_and_files_and_ends_the_task_with_its_code(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    log = await launch(sim, fake_tart, tmp_path)
    args = ["with space", 'it\'s "quoted"', "$HOME and `x`", ""]
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        started = await start(sim, job(BUILD, *args, extra=HOOKS))
        task_id = started["task_id"]
        alloc_dir = Path(started["alloc_dir"])
        data = alloc_dir / "alloc" / "data"
        await until((data / "env.txt").exists)
        ran = await sim.call("exec_task", task_id=task_id, command=["echo", "exec works"])
        assert base64.b64decode(ran["stdout_b64"]) == b"exec works\n", "exec during the command"
        shell = await open_session(sim, task_id, ["/bin/sh"], tty=False)  # nomad alloc exec
        await shell.send(b"echo alloc exec works; exit 4\n")
        await sim.call("exec_stdin_close", stream=shell.stream.id)
        assert ended_cleanly(shell, await shell.finish()) == 4
        assert bytes(shell.stdout) == b"alloc exec works\n"
        host_argv = argv_on_host()
        (data / "go").touch()
        with trio.fail_after(30):
            waited = await sim.call("wait_task", task_id=task_id)
        nursery.cancel_scope.cancel()
    assert waited["result"]["exit_code"] == 3 and not waited["err"]
    assert SECRET_ENV not in host_argv and SECRET_TEMPLATE not in host_argv
    assert (data / "env.txt").read_text().splitlines() == [
        SECRET_ENV,
        SECRET_TEMPLATE,
        started["task_config"]["alloc_id"],
        "/Volumes/My Shared Files/local",
    ]
    assert (data / "result.txt").read_text() == "built in /Volumes/My Shared Files\n"
    vm = f"nomad-{started['task_config']['alloc_id']}"
    await until(lambda: vm not in fake_tart.running_vms())  # powered off after the exit
    await sim.call("destroy_task", task_id=task_id)
    assert vm_names(fake_tart) == []
    stdout = Path(started["stdout_log"]).read_text()  # complete once logmon stopped
    assert stdout == "".join(f"<{a}>\n" for a in args) + "input from local/\n"
    assert Path(started["stderr_log"]).read_text() == "to stderr\n"
    texts = repr(events) + log.read_text() + Path(f"{log}.raw").read_text()
    assert SECRET_ENV not in texts and SECRET_TEMPLATE not in texts
    assert plugin_log(log)


COUNT = r"""
i=1
while [ "$i" -le "$1" ]; do
  echo "n=$i"
  i=$((i + 1))
  sleep "$2"
done
exit "$3"
"""

SEQ = re.compile(r"^n=(\d+)$", re.M)


def numbers(path: Path) -> list[int]:
    return [int(n) for n in SEQ.findall(path.read_text())] if path.exists() else []


async def test_output_and_exit_code_survive_a_plugin_kill_even_when_the_command_ends_meanwhile(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    slow = await start(sim, job(COUNT, "400", "0.01", "5"))  # runs through the kill
    quick = await start(sim, job(COUNT, "300", "0", "6", image=LINUX_IMAGE))  # ends meanwhile
    logs = [Path(t["stdout_log"]) for t in (slow, quick)]
    await until(lambda: len(numbers(logs[0])) >= 50)

    await sim.call("sigkill")
    delivered = len(numbers(logs[0]))
    slow_out, quick_status = (
        next((guest_jobs(fake_tart, t)).glob(f"*/{name}"))
        for t, name in ((slow, "out"), (quick, "status"))
    )
    await until(lambda: "exit 6" in quick_status.read_text())
    await until(lambda: len(numbers(slow_out)) >= delivered + 30)  # printed while no plugin ran
    await launch(sim, fake_tart, tmp_path)
    for task in (slow, quick):
        await sim.call("recover_task", handle=task["handle"], drop_driver_config=True)
    with trio.fail_after(60):
        results = [await sim.call("wait_task", task_id=t["task_id"]) for t in (slow, quick)]
    assert [r["result"]["exit_code"] for r in results] == [5, 6]
    assert len(fake_tart.calls_of("run")) == 2, "nothing ran twice"
    for task in (slow, quick):
        await sim.call("destroy_task", task_id=task["task_id"])
    assert vm_names(fake_tart) == []
    for log, count in zip(logs, (400, 300), strict=True):
        # The kill may fall between a write to the FIFO and saving the offset after it:
        # that one write (at most PIPE_BUF bytes) may then come twice, nothing else.
        expected = "".join(f"n={i}\n" for i in range(1, count + 1))
        assert delivered_once_or_one_write_twice(log.read_text(), expected), "no gap"


FLOOD = r"""
while [ ! -e "$NOMAD_ALLOC_DIR/data/go" ]; do sleep 0.1; done
i=1
while [ "$i" -le "$1" ]; do
  echo "n=$i"
  i=$((i + 1))
done
"""


async def test_a_plugin_killed_while_logmon_holds_its_output_back_repeats_and_loses_nothing(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """The FIFO is full and the plugin waits with a partly written chunk: a kill then is
    where a resume from the last whole chunk repeated lines."""
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, job(FLOOD, "40000"))  # ~300 KB: far more than a pipe holds
    log = Path(task["stdout_log"])
    await sim.call("logmon", task_id=task["task_id"], stream="stdout", state="paused")
    (Path(task["alloc_dir"]) / "alloc" / "data" / "go").touch()
    jobs = guest_jobs(fake_tart, task)
    await until(lambda: any("exit 0" in s.read_text() for s in jobs.glob("*/status")))
    runtime = Path(decode_state(base64.b64decode(task["handle"]["driver_state"])).runtime_dir)
    await until(unchanged_for(runtime / "command.offsets", 1.0))  # waits for logmon
    await sim.call("sigkill")
    await sim.call("logmon", task_id=task["task_id"], stream="stdout", state="running")
    await launch(sim, fake_tart, tmp_path)
    await sim.call("recover_task", handle=task["handle"], drop_driver_config=True)
    with trio.fail_after(60):
        waited = await sim.call("wait_task", task_id=task["task_id"])
    assert waited["result"]["exit_code"] == 0
    await sim.call("destroy_task", task_id=task["task_id"])
    assert log.read_text() == "".join(f"n={i}\n" for i in range(1, 40001)), "nothing twice"


TRAPS = r"""
out="$NOMAD_ALLOC_DIR/data"
trap 'echo usr1 >> "$out/signals"' USR1
trap 'echo "cleaned up" > "$out/marker"; exit 0' TERM
echo ready > "$out/ready"
while :; do sleep 0.2; done
"""


async def test_stop_gives_the_command_its_kill_signal_then_the_vm_goes_down_within_kill_timeout(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    started = await start(sim, job(TRAPS))
    task_id = started["task_id"]
    data = Path(started["alloc_dir"]) / "alloc" / "data"
    await until((data / "ready").exists)
    await sim.call("signal_task", task_id=task_id, signal="SIGUSR1")  # nomad alloc signal
    await until((data / "signals").exists)
    stopped = await sim.call("stop_task", task_id=task_id, timeout_seconds=5, signal="SIGTERM")
    assert stopped["seconds"] < 5, "within kill_timeout"
    assert (data / "marker").read_text() == "cleaned up\n", "the build cleaned up"
    assert (data / "signals").read_text() == "usr1\n"
    vm = f"nomad-{started['task_config']['alloc_id']}"
    assert vm not in fake_tart.running_vms(), "StopTask returns once the VM is down"
    waited = await sim.call("wait_task", task_id=task_id)
    assert waited["result"]["exit_code"] == 0 and not waited["err"]
    await sim.call("destroy_task", task_id=task_id)
    assert vm_names(fake_tart) == []


async def test_timeout_kills_the_command_and_a_guest_dying_under_it_fails_the_task(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    forever = 'echo started > "$NOMAD_ALLOC_DIR/data/started"; exec sleep 100000'
    timed = await start(sim, job(forever, options='        timeout = "2s"'))
    off = await start(sim, job(forever, image=LINUX_IMAGE))
    rebooted = await start(sim, job(forever, image=LINUX_IMAGE))
    for task in (off, rebooted):
        data = Path(task["alloc_dir"]) / "alloc" / "data"
        await until(lambda data=data: (data / "started").exists())
    ips = [
        (await sim.call("inspect_task", task_id=t["task_id"]))["driver"]["attributes"]["ip"]
        for t in (off, rebooted)
    ]
    fake_tart.ssh(ips[0], "sudo shutdown -h now")
    fake_tart.ssh(ips[1], "sudo reboot")
    with trio.fail_after(60):
        results = [
            await sim.call("wait_task", task_id=t["task_id"]) for t in (timed, off, rebooted)
        ]
    timeout, powered_off, reboot = results
    assert timeout["result"]["exit_code"] == 143 and timeout["result"]["signal"] == 15
    assert "did not finish within its timeout of 2s and was killed" in timeout["err"]
    assert powered_off["result"]["exit_code"] != 0
    assert "the VM stopped while the command was still running" in powered_off["err"]
    assert reboot["result"]["exit_code"] != 0
    assert "the guest rebooted" in reboot["err"]
    for task in (timed, off, rebooted):
        await sim.call("destroy_task", task_id=task["task_id"])
    assert vm_names(fake_tart) == []


LINES = 2_000_000  # ~15 MB: more than a pipe, logmon's FIFO and the old 8 MiB buffer


def sequence_intact(path: Path, extra: set[str] = frozenset()) -> bool:
    """Every line is the next number (or one of ``extra``); all numbers arrived."""
    expected = 1
    with path.open() as lines:
        for line in lines:
            text = line.rstrip("\n")
            if text in extra:
                continue
            if text != str(expected):
                return False
            expected += 1
    return expected == LINES + 1


def stopped_growing(path: Path) -> Callable[[], bool]:
    """True once ``path`` has stopped growing for a second (its writer waits, or is done)."""
    seen: list[tuple[float, int]] = []

    def check() -> bool:
        size = path.stat().st_size if path.exists() else 0
        now = time.monotonic()
        if not seen or seen[-1][1] != size:
            seen.append((now, size))
        return size > 0 and now - seen[-1][0] >= 1.0

    return check


async def test_a_stalled_logmon_loses_no_line_of_guest_logs_or_command_output(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """Nomad's logmon stops reading for a while: the guest's writers wait instead."""
    await launch(sim, fake_tart, tmp_path)
    wait_go = 'while [ ! -e "$HOME/go" ]; do sleep 0.1; done'
    log_command = f'{wait_go}; seq 1 {LINES} | tee "$HOME/progress"; exec sleep 100000'
    service = await start(
        sim,
        _variant(f'log_command = ["/bin/sh", "-c", {hcl_string(log_command)}]'),
    )
    build = await start(
        sim,
        job(
            f'while [ ! -e "$NOMAD_ALLOC_DIR/data/go" ]; do sleep 0.1; done; seq 1 {LINES}',
            options="        guest_logs  = true\n"
            '        log_command = ["/bin/sh", "-c", "echo guest-log-line; exec sleep 100000"]',
        ),
    )
    for task in (service, build):
        await sim.call("logmon", task_id=task["task_id"], stream="stdout", state="paused")
    ip = (await sim.call("inspect_task", task_id=service["task_id"]))["driver"]["attributes"]
    fake_tart.ssh(ip["ip"], "touch ~/go")
    (Path(build["alloc_dir"]) / "alloc" / "data" / "go").touch()
    progress = guest_home(fake_tart, service) / "progress"
    build_status = guest_jobs(fake_tart, build)
    await until(stopped_growing(progress), 60)
    await until(lambda: "exit 0" in next(build_status.glob("*/status")).read_text(), 60)
    assert progress.stat().st_size < 8 << 20, "the guest's writer waited for logmon"
    for task in (service, build):
        await sim.call("logmon", task_id=task["task_id"], stream="stdout", state="running")
    with trio.fail_after(60):
        waited = await sim.call("wait_task", task_id=build["task_id"])
    assert waited["result"]["exit_code"] == 0
    service_log = Path(service["stdout_log"])
    await until(lambda: service_log.read_bytes().endswith(f"\n{LINES}\n".encode()), 60)
    assert sequence_intact(service_log)
    for task in (service, build):
        await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
        await sim.call("destroy_task", task_id=task["task_id"])
    assert sequence_intact(Path(build["stdout_log"]), {"guest-log-line"})
