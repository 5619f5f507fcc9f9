"""Exec into the VM through the Go stand-in: script checks and ``nomad alloc exec``."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import until
from tests.conformance.nomadsim import NomadSim, NomadSimError, SimStream, StreamEnded
from tests.conformance.test_lifecycle import launch, start
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

JOB = (
    'job "exec" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
    f'      config {{\n        url = "{LINUX_IMAGE}"\n        ssh_user = "admin"\n'
    '        ssh_password = "admin"\n      }\n    }\n  }\n}\n'
)
CAP = 16 << 20


async def running_task(
    sim: NomadSim, fake: FakeTart, tmp_path: Path
) -> tuple[dict[str, Any], str, str]:
    """Launch the plugin and start JOB: (StartTask's reply, task id, the VM's address)."""
    await launch(sim, fake, tmp_path)
    started = await start(sim, JOB, cores=2, memory_mb=2048)
    task_id: str = started["task_id"]
    inspected = await sim.call("inspect_task", task_id=task_id)
    return started, task_id, inspected["driver"]["attributes"]["ip"]


async def exec_task(sim: NomadSim, task_id: str, command: list[str], limit: float = 10) -> Any:
    ran = await sim.call("exec_task", task_id=task_id, command=command, timeout_seconds=limit)
    ran["stdout"] = base64.b64decode(ran["stdout_b64"])
    ran["stderr"] = base64.b64decode(ran["stderr_b64"])
    return ran


async def guest_sh(fake: FakeTart, ip: str, command: str) -> str:
    done = await trio.to_thread.run_sync(fake.ssh, ip, command)
    assert done.returncode == 0, done.stderr
    out: str = done.stdout
    return out.strip()


async def guest_processes(fake: FakeTart, ip: str, pattern: str) -> str:
    """PIDs of guest processes whose command line matches ``pattern``."""
    # "[s]leep" keeps the pattern from matching this very command line.
    return await guest_sh(fake, ip, f"pgrep -f '[{pattern[0]}]{pattern[1:]}' || true")


async def wait_gone(fake: FakeTart, ip: str, pattern: str) -> None:
    with trio.fail_after(10):
        while await guest_processes(fake, ip, pattern):
            await trio.sleep(0.1)


class Session:
    """One exec stream: what came back so far."""

    def __init__(self, sim: NomadSim, stream: SimStream) -> None:
        self.sim = sim
        self.stream = stream
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.messages: list[dict[str, Any]] = []

    def _take(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)
        for name, buf in (("stdout", self.stdout), ("stderr", self.stderr)):
            part = msg.get(name) or {}
            if part.get("data"):
                buf.extend(base64.b64decode(part["data"]))

    async def until(self, text: bytes, seconds: float = 10) -> None:
        with trio.fail_after(seconds):
            while text not in self.stdout:
                self._take(await self.stream.receive())

    async def finish(self, seconds: float = 20) -> dict[str, Any]:
        with trio.fail_after(seconds):
            try:
                while True:
                    self._take(await self.stream.receive())
            except StreamEnded as ended:
                return ended.end

    async def send(self, data: bytes) -> None:
        await self.sim.call(
            "exec_stdin", stream=self.stream.id, data_b64=base64.b64encode(data).decode()
        )


async def open_session(sim: NomadSim, task_id: str, command: list[str], tty: bool) -> Session:
    stream = await sim.open_stream("exec_streaming", task_id=task_id, command=command, tty=tty)
    return Session(sim, stream)


def ended_cleanly(session: Session, end: dict[str, Any]) -> int:
    """Check the stream ended as Nomad expects; return the exit code."""
    assert end["error"] is None, end
    tail = session.messages[-3:]
    assert tail[0]["stdout"]["close"] is True and tail[1]["stderr"]["close"] is True, tail
    assert tail[2]["exited"] is True and tail[2]["result"] is not None, tail
    code: int = tail[2]["result"]["exit_code"]
    return code


async def test_exec_task_output_quoting_timeout_cap_and_errors(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    _, task_id, ip = await running_task(sim, fake_tart, tmp_path)

    ran = await exec_task(sim, task_id, ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (ran["stdout"], ran["stderr"], ran["exit_code"]) == (b"out\n", b"err\n", 3)
    assert ran["response"]["result"]["exit_code"] == 3

    words = ["a b", "it's", '"q"', "$HOME", "a;b", "x\ny", "", "*", "\\", "`id`", "é"]
    ran = await exec_task(sim, task_id, ["printf", "%s|", *words])
    assert ran["stdout"].decode() == "".join(f"{w}|" for w in words)
    assert ran["exit_code"] == 0

    # Killed in the guest at the timeout, with every process of its session: here a child
    # in a process group of its own, which a signal to the command's group would miss.
    script = "echo begun; perl -e 'setpgrp; exec qw(sleep 100)'; echo never"
    ran = await exec_task(sim, task_id, ["/bin/sh", "-c", script], 1)
    assert ran["seconds"] < 5, ran
    assert ran["exit_code"] == 124 and ran["stdout"] == b"begun\n"
    assert b"did not finish within 1s" in ran["stderr"]
    await wait_gone(fake_tart, ip, "sleep 100")

    # A chatty command is cut at the cap, not failed.
    ran = await exec_task(sim, task_id, ["head", "-c", str(CAP + 1000), "/dev/zero"], 30)
    assert ran["exit_code"] == 0 and len(ran["stdout"]) == CAP

    with pytest.raises(NomadSimError) as caught:
        await exec_task(sim, "no-such-task", ["true"])
    assert caught.value.code == "NotFound"
    session = await open_session(sim, "no-such-task", ["true"], tty=False)
    end = await session.finish()
    assert end["code"] == "NotFound", end

    await sim.call("stop_task", task_id=task_id, timeout_seconds=5, signal="SIGKILL")
    await sim.call("wait_task", task_id=task_id, timeout_seconds=20)
    with pytest.raises(NomadSimError) as caught:
        await exec_task(sim, task_id, ["true"])
    assert caught.value.code == "FailedPrecondition"
    assert "has exited" in caught.value.message
    await sim.call("destroy_task", task_id=task_id)
    assert (await sim.call("capabilities"))["capabilities"]["exec"] is True


async def test_alloc_exec_tty_pipe_and_disconnect(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    _, task_id, ip = await running_task(sim, fake_tart, tmp_path)

    # An interactive shell on a terminal: keystrokes, a resize, the exit code.
    shell = await open_session(sim, task_id, ["/bin/sh"], tty=True)
    await sim.call("exec_resize", stream=shell.stream.id, height=40, width=100)
    await sim.call("exec_heartbeat", stream=shell.stream.id)
    await shell.send(b"tty; stty size\n")
    await shell.until(b"40 100")
    assert b"/dev/pts/" in shell.stdout
    await sim.call("exec_resize", stream=shell.stream.id, height=50, width=132)
    await shell.send(b"stty size\n")
    await shell.until(b"50 132")
    await shell.send(b"exit 7\n")
    assert ended_cleanly(shell, await shell.finish()) == 7
    assert not shell.stderr

    # Without a terminal, stdin goes through byte for byte; stderr stays separate.
    payload = bytes(range(256)) + os.urandom(10 << 20)
    pipe = await open_session(sim, task_id, ["/bin/sh", "-c", "cat; echo done >&2"], tty=False)
    for at in range(0, len(payload), 1 << 20):
        await pipe.send(payload[at : at + (1 << 20)])
    await sim.call("exec_stdin_close", stream=pipe.stream.id)
    assert ended_cleanly(pipe, await pipe.finish(30)) == 0
    assert bytes(pipe.stdout) == payload and bytes(pipe.stderr) == b"done\n"

    # The user goes away mid-command: nothing is left running in the guest.
    for tty in (False, True):
        # sleep: a child in its own process group that ignores a closed terminal's SIGHUP.
        script = "trap '' HUP; echo begun; perl -e 'setpgrp; exec qw(sleep 101)'; echo never"
        busy = await open_session(sim, task_id, ["/bin/sh", "-c", script], tty)
        await busy.until(b"begun")
        sleeper = await guest_sh(fake_tart, ip, "pgrep -fx 'sleep 101'")
        leader = await guest_sh(fake_tart, ip, f"ps -o sid= -p {sleeper}")
        await sim.call("exec_cancel", stream=busy.stream.id)
        end = await busy.finish()
        assert end["cancelled_by_client"] is True
        await wait_gone(fake_tart, ip, "sleep 101")
        with trio.fail_after(10):  # the session's leader, the login shell, is gone too
            while await guest_sh(fake_tart, ip, f"ps -o pid= -p {leader} || true"):
                await trio.sleep(0.1)
    await sim.call("destroy_task", task_id=task_id)


async def test_exec_into_a_task_recovered_after_a_plugin_restart(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.set_knobs(boot_delay=1)
    await launch(sim, fake_tart, tmp_path)
    started = await start(sim, JOB, cores=2, memory_mb=2048)
    task_id = started["task_id"]
    await sim.call("sigkill")
    await launch(sim, fake_tart, tmp_path)
    await sim.call("recover_task", handle=started["handle"], drop_driver_config=True)
    ran = await exec_task(sim, task_id, ["/bin/sh", "-c", 'echo "$0 $1"', "a b", "c"])
    assert (ran["stdout"], ran["exit_code"]) == (b"a b c\n", 0)

    # While the guest reboots, exec waits for SSH to come back instead of failing.
    ip = (await sim.call("inspect_task", task_id=task_id))["driver"]["attributes"]["ip"]
    await trio.to_thread.run_sync(fake_tart.ssh, ip, "sudo reboot")
    with trio.fail_after(10):
        while fake_tart.port_open(ip):
            await trio.sleep(0.02)
    ran = await exec_task(sim, task_id, ["echo", "back"])
    assert (ran["stdout"], ran["exit_code"]) == (b"back\n", 0)
    await sim.call("destroy_task", task_id=task_id)


async def test_script_checks_share_one_login_and_survive_a_guest_reboot(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    started, task_id, ip = await running_task(sim, fake_tart, tmp_path)
    vm = f"nomad-{started['task_config']['alloc_id']}"
    console = fake_tart.vm_dir(vm) / ".faketart"

    def logins() -> int:
        return (console / "console.log").read_text(errors="replace").count("Accepted password")

    assert (await exec_task(sim, task_id, ["true"]))["exit_code"] == 0
    before = logins()
    checks = [await exec_task(sim, task_id, ["echo", f"check {n}"]) for n in range(5)]
    assert [c["stdout"] for c in checks] == [f"check {n}\n".encode() for n in range(5)]
    assert logins() == before, "the checks reuse one SSH login"

    # A reboot drops every connection; the next check logs in again and runs.
    booted = fake_tart.runtime(vm)["booted_at"]
    await trio.to_thread.run_sync(fake_tart.ssh, ip, "sudo reboot")  # the session drops
    await until(lambda: fake_tart.runtime(vm).get("booted_at") not in (None, booted))
    ran = await exec_task(sim, task_id, ["echo", "after reboot"], 30)
    assert (ran["stdout"], ran["exit_code"]) == (b"after reboot\n", 0)
    await sim.call("stop_task", task_id=task_id, timeout_seconds=5)
    await sim.call("destroy_task", task_id=task_id)


async def test_sessions_beyond_what_one_connection_carries_still_run(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    # A guest whose sshd takes 3 sessions per connection: more at once must not fail,
    # and must not disturb the sessions already running.
    fake_tart.set_knobs("nomad-*", max_sessions=3)
    _, task_id, _ = await running_task(sim, fake_tart, tmp_path)
    script = 'echo "started $1"; read line; echo "ended $1"'
    sessions = [
        await open_session(sim, task_id, ["/bin/sh", "-c", script, "sh", str(n)], tty=False)
        for n in range(10)
    ]
    for n, session in enumerate(sessions):
        await session.until(f"started {n}".encode())
    for n, session in enumerate(sessions):
        await sim.call("exec_stdin_close", stream=session.stream.id)  # `read` returns
        assert ended_cleanly(session, await session.finish()) == 0
        assert bytes(session.stdout) == f"started {n}\nended {n}\n".encode()
    await sim.call("stop_task", task_id=task_id, timeout_seconds=5)
    await sim.call("destroy_task", task_id=task_id)
