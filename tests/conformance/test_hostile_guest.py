"""A hostile guest: a CI job's command attacks the plugin and the host from inside its VM.

Each attack runs the way a build would: as the job's ``command`` in a fake VM, through the
Go stand-in. The guest may write anything it can reach, the runner's own files in
``~/.nomad-tart/`` included; the plugin must end every such task with a clear outcome,
and nothing may reach the host beyond the task's own shares.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import launch_args, plugin_log, until
from tests.conformance.nomadsim import NomadSim, NomadSimError
from tests.conformance.test_command import PLUGIN_CONFIG, job, launch, start
from tests.conformance.test_exec import exec_task
from tests.conformance.test_lifecycle import collect, vm_names
from tests.faketart.fixtures import LINUX_IMAGE, MACOS_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

#: Every way into the allocation's logs/ a build could try: through $NOMAD_ALLOC_DIR, and
#: through the shares' root, where the whole alloc/ used to be shared.
LOGS_ATTACK = r"""
root=$(dirname "$NOMAD_TASK_DIR")
for d in "$NOMAD_ALLOC_DIR/logs" "$root/alloc/logs"; do
  [ -d "$d" ] || continue
  echo "reached $d"
  for f in "$d"/* "$d"/.[!.]*; do rm -f "$f" 2>/dev/null && echo "removed $f"; done
  ln -s /etc/hostname "$d/sibling.stdout.7" 2>/dev/null && echo "planted a link"
  echo forged > "$d/sibling.stdout.0" 2>/dev/null && echo "forged a log"
done
echo kept > "$NOMAD_ALLOC_DIR/data/result"
echo scratch > "$NOMAD_ALLOC_DIR/tmp/scratch"
ls "$NOMAD_ALLOC_DIR"
"""


async def finished(sim: NomadSim, task: dict[str, Any], seconds: float = 60) -> dict[str, Any]:
    with trio.fail_after(seconds):
        done: dict[str, Any] = await sim.call("wait_task", task_id=task["task_id"])
    await sim.call("destroy_task", task_id=task["task_id"])
    return done


def tree(path: Path) -> dict[str, str]:
    """Every entry under ``path``: its kind (and a link's target)."""
    found = {}
    for entry in sorted(path.rglob("*")):
        kind = "link " + os.readlink(entry) if entry.is_symlink() else entry.stat().st_mode
        found[str(entry.relative_to(path))] = str(kind)
    return found


@pytest.mark.parametrize("image", [MACOS_IMAGE, LINUX_IMAGE])
async def test_a_command_reaches_alloc_data_and_tmp_but_never_the_logs_of_the_allocation(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path, image: str
) -> None:
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, job(LOGS_ATTACK, image=image))
    alloc = Path(task["alloc_dir"]) / "alloc"
    logs_before = tree(alloc / "logs")
    done = await finished(sim, task)
    assert done["result"]["exit_code"] == 0, done
    assert tree(alloc / "logs") == logs_before, "the guest changed the allocation's logs"
    assert (alloc / "data" / "result").read_text() == "kept\n"
    assert (alloc / "tmp" / "scratch").read_text() == "scratch\n"
    output = Path(task["stdout_log"]).read_text()
    assert output.split() == ["data", "tmp"], output
    assert vm_names(fake_tart) == []


def status_attack(lines: str) -> str:
    """A command that writes ``lines`` into its own job's status file, then waits."""
    return (
        'for s in "$HOME"/.nomad-tart/*/status; do printf "%b" "$1" >> "$s"; done\nsleep 30\n'
    ).replace("$1", lines.replace("\\", "\\\\").replace('"', '\\"'))


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("exit 0x1 5 5\\n", "'exit 0x1 5 5'"),
        ("exit 2147483648 0 0\\n", "'exit 2147483648 0 0'"),
        ("lost 1 2 3 4\\n", "'lost 1 2 3 4'"),
    ],
)
async def test_forged_status_lines_end_the_task_with_a_clear_error(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path, lines: str, expected: str
) -> None:
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, job(status_attack(lines), image=LINUX_IMAGE))
    done = await finished(sim, task)
    assert done["result"]["exit_code"] == 1
    assert "holds a line the runner never writes" in done["err"] and expected in done["err"], done
    inspected_after = await sim.call("capabilities")
    assert inspected_after  # the plugin still answers


async def test_a_flood_of_status_lines_neither_stalls_the_plugin_nor_decides_the_outcome(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """8 MiB of newlines and a 4 MiB line without end, then two forged exits: the first
    wins. A neighbour task's logs keep arriving meanwhile."""
    await launch(sim, fake_tart, tmp_path)
    neighbour = await start(sim, job(COUNT_FOREVER, image=LINUX_IMAGE))
    flood = (
        'for s in "$HOME"/.nomad-tart/*/status; do\n'
        '  head -c 8388608 /dev/zero | tr "\\0" "\\n" >> "$s"\n'
        '  head -c 4194304 /dev/zero | tr "\\0" x >> "$s"\n'
        '  printf "\\nexit 7 0 0\\nexit 0 0 0\\n" >> "$s"\n'
        "done\nsleep 30\n"
    )
    attacker = await start(sim, job(flood, image=LINUX_IMAGE))
    neighbour_log = Path(neighbour["stdout_log"])
    before = len(neighbour_log.read_text().splitlines())
    done = await finished(sim, attacker)
    assert done["result"]["exit_code"] == 7, done
    await until(lambda: len(neighbour_log.read_text().splitlines()) > before + 5)
    inspected = await sim.call("inspect_task", task_id=neighbour["task_id"])
    assert inspected["task"]["state"] == "RUNNING"
    await sim.call("stop_task", task_id=neighbour["task_id"], timeout_seconds=5)
    await finished(sim, neighbour)


COUNT_FOREVER = 'i=0\nwhile :; do i=$((i + 1)); echo "n=$i"; sleep 0.05; done\n'


async def test_output_without_a_line_break_is_delivered_in_bounded_lines_with_guest_logs(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """``cat some.bin`` with guest_logs on: the output shares the sink with log lines, so
    it goes in whole lines; one without end is cut at 1 MiB, as guest log lines are."""
    await launch(sim, fake_tart, tmp_path)
    script = 'head -c 3145728 /dev/zero | tr "\\0" x\nprintf "\\nend\\n"\n'
    task = await start(sim, job(script, image=LINUX_IMAGE, options="        guest_logs = true"))
    done = await finished(sim, task)
    assert done["result"]["exit_code"] == 0
    lines = [
        line
        for line in Path(task["stdout_log"]).read_bytes().split(b"\n")
        if line == b"end" or (line and not line.strip(b"x"))  # not guest log lines
    ]
    assert [len(line) for line in lines] == [1 << 20, 1 << 20, 1 << 20, 3]
    assert lines[-1] == b"end"


async def test_env_names_the_guest_shell_keeps_read_only_are_left_out_and_said(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """macOS's /bin/sh is bash in POSIX mode, which aborts at ``export UID=...``."""
    await launch(sim, fake_tart, tmp_path)
    env_block = (
        '      env {\n        UID = "12345"\n        PPID = "1"\n        OK = "yes"\n      }\n'
    )
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        task = await start(
            sim, job('echo "OK=$OK"; [ "$UID" != 12345 ]', image=MACOS_IMAGE, extra=env_block)
        )
        done = await finished(sim, task)
        nursery.cancel_scope.cancel()
    assert done["result"]["exit_code"] == 0, done
    assert Path(task["stdout_log"]).read_text() == "OK=yes\n"
    said = [e["message"] for e in events if "not passed to the command" in e["message"]]
    assert said and "PPID" in said[0] and "UID" in said[0]
    jobs = Path(fake_tart.vm_dir(f"nomad-{task['task_config']['alloc_id']}"))
    assert not list(jobs.glob(".faketart/home/.nomad-tart/*/env")), "no env file left behind"


async def test_a_timeout_beyond_what_sleep_takes_is_refused_before_cloning(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    for timeout in ("9" * 309 + "s", "600000h"):
        with pytest.raises(NomadSimError, match="timeout"):
            await start(sim, job("true", options=f'        timeout = "{timeout}"'))
    huge = "x" * (70 << 10)
    with pytest.raises(NomadSimError, match="args"):
        await start(sim, job("true", huge, image=LINUX_IMAGE))
    assert fake_tart.calls_of("clone") == []


async def test_a_long_timeout_does_not_fire_at_once(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """The watchdog fires only when sleep slept: one that refuses the time ends nothing."""
    await launch(sim, fake_tart, tmp_path)
    task = await start(
        sim, job("sleep 1; echo done", image=LINUX_IMAGE, options='        timeout = "2147483647s"')
    )
    done = await finished(sim, task)
    assert done["result"]["exit_code"] == 0 and not done["err"], done
    assert Path(task["stdout_log"]).read_text() == "done\n"


async def test_writing_to_dev_stdout_loses_no_output_on_linux_guests(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    script = (
        "echo line-1\n"
        "echo line-2 > /dev/stdout\n"
        "echo line-3 | tee /dev/stderr\n"
        "echo line-4 >> /dev/stdout\n"
        "echo err-1 > /dev/stderr\n"
    )
    task = await start(sim, job(script, image=LINUX_IMAGE))
    done = await finished(sim, task)
    assert done["result"]["exit_code"] == 0
    assert Path(task["stdout_log"]).read_text() == "line-1\nline-2\nline-3\nline-4\n"
    assert Path(task["stderr_log"]).read_text() == "line-3\nerr-1\n"


async def test_a_shell_that_greets_before_the_runner_speaks_still_starts_the_command(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """Text the guest user's shell prints for every command (a ``.zshenv`` on a Mac) is
    the shell's, not the command's: StartTask looks past it, and neither the command's
    output nor an exec's output starts with it."""
    await launch(sim, fake_tart, tmp_path)
    fake_tart.set_knobs("nomad-*", shell_greeting="Welcome to the build box\nmotd\n")
    script = 'while [ ! -e "$NOMAD_ALLOC_DIR/data/go" ]; do sleep 0.1; done\necho built\n'
    task = await start(sim, job(script, image=LINUX_IMAGE))
    ran = await exec_task(sim, task["task_id"], ["echo", "exec works"])
    assert (ran["exit_code"], ran["stdout"]) == (0, b"exec works\n")
    (Path(task["alloc_dir"]) / "alloc" / "data" / "go").touch()
    done = await finished(sim, task)
    assert done["result"]["exit_code"] == 0
    assert Path(task["stdout_log"]).read_text() == "built\n"


FILL = 'dd if=/dev/zero of="$NOMAD_ALLOC_DIR/data/fill" bs=1048576 count=96 2>/dev/null\nsleep 60\n'


async def test_a_guest_that_fills_its_shares_is_stopped_at_the_reserve_and_others_run_on(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """Allocations on a 64 MiB volume (a tmpfs): the default reserve is a tenth of it."""
    small = tmp_path / "small-volume"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], check=True)
    try:
        await launch(sim, fake_tart, tmp_path)
        allocs = [small / "filler", small / "neighbour"]
        neighbour = await start(
            sim, job(COUNT_FOREVER, image=LINUX_IMAGE), alloc_dir=str(allocs[1])
        )
        filler = await start(sim, job(FILL, image=LINUX_IMAGE), alloc_dir=str(allocs[0]))
        with trio.fail_after(60):
            done = await sim.call("wait_task", task_id=filler["task_id"])
        assert done["result"]["exit_code"] == 1
        err = done["err"]
        assert "disk_reserve" in err and "alloc/data" in err, done
        inspected = await sim.call("inspect_task", task_id=neighbour["task_id"])
        assert inspected["task"]["state"] == "RUNNING", "the other task runs on"
        await sim.call("destroy_task", task_id=filler["task_id"])
        await sim.call("stop_task", task_id=neighbour["task_id"], timeout_seconds=5)
        await finished(sim, neighbour)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.slow
async def test_a_guest_that_breaks_the_output_followers_is_retried_with_growing_pauses(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """The guest removes its output file and kills the follower: each new follower fails
    at once, and the plugin waits longer each time instead of reconnecting twice a second."""
    log = tmp_path / "plugin.log"
    env = {**fake_tart.env(), "NOMAD_DRIVER_TART_LOG_LEVEL": "debug"}
    await sim.call("launch", **launch_args(log, **env))
    await sim.call("set_config", hcl=PLUGIN_CONFIG, with_nomad_config=True)
    script = (
        'end=$(($(date +%s) + 5))\nwhile [ "$(date +%s)" -lt "$end" ]; do\n'
        '  rm -f "$HOME"/.nomad-tart/*/out\n  pkill -f "[t]ail -c" || true\n  sleep 0.2\n'
        'done\nrm -f "$HOME"/.nomad-tart/*/out\n'
    )
    task = await start(sim, job(script, image=LINUX_IMAGE))
    await finished(sim, task)  # with whatever outcome: the guest broke its own files
    said = [e for e in plugin_log(log) if e["@message"] == "command output unavailable"]
    for file in ("out", "err"):
        pauses = [e["retry_in"] for e in said if e["error"].endswith(f"{file} ended")]
        assert len(pauses) >= 3, said
        assert pauses == sorted(pauses) and pauses[:3] == [0.5, 1.0, 2.0], pauses
