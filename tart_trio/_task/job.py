"""The task's command, seen from the task: started detached in the guest, followed to
its end (output into the task's log sinks, then its result), signalled and stopped.

The guest side (the runner, its files, the byte offsets that make the output resumable)
is ``_guest.command``. The result is kept beside the VM's runtime files, so a recovered
task reports it even when the VM is gone by then.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
import trio

from tart_trio._config.task import TaskConfig
from tart_trio._errors import RecoverableError, TartTrioError
from tart_trio._guest import command, scripts, ssh
from tart_trio._guest.sink import Sink
from tart_trio._guest.status import Outcome
from tart_trio._host.safefs import open_own_file
from tart_trio._model import ExitResult, TaskEnv
from tart_trio._task.state import DriverState

log = logging.getLogger("task")

#: A command's ``timeout`` is enforced in the guest; the plugin gives up on a guest that
#: has not reported the end this long after the timeout and its SIGKILL grace.
TIMEOUT_BACKSTOP: Final = 30.0
#: How long signalling the command over SSH may take.
SIGNAL_SECONDS: Final = 5.0


class CommandJob:
    """One task's command: its environment until it starts, then how it ended."""

    def __init__(
        self,
        config: TaskConfig,
        vm_name: str,
        emit: Callable[[str, dict[str, str]], None],
        runtime_dir: Path,
        env: TaskEnv | None,
    ) -> None:
        self.config = config
        self.vm_name = vm_name
        self._emit = emit
        self.runtime_dir = runtime_dir
        #: The task's environment, for the command; dropped once the command started.
        self._env = env
        #: How the command ended, as soon as that is known (its output may still flow).
        self.result: ExitResult | None = None
        #: Whether we sent the command's group SIGKILL (which ends its runner too).
        self.sent_kill = False

    def address(self, state: DriverState) -> ssh.GuestAddress:
        """Where the guest answers, with its pinned host key."""
        return ssh.GuestAddress(
            host=state.ip,
            user=self.config.ssh_user,
            password=self.config.ssh_password,
            host_key=state.host_key,
        )

    async def start(
        self, address: ssh.GuestAddress, guest_os: str, *, shares_root: str = ""
    ) -> str:
        """Start the task's command in the guest, detached; its job name there.

        ``shares_root``: where the task's shares are in the guest when not where Tart puts
        them (a warm start mounts them itself).
        """
        job = secrets.token_hex(8)
        root = shares_root or scripts.shares_root(guest_os)
        env, skipped = scripts.env_file(
            dict(self._env.items()) if self._env is not None else {}, root
        )
        self._env = None  # held no longer than needed
        if skipped:
            self._emit(
                f"{len(skipped)} environment variables are not passed to the command: their "
                "names are not shell identifiers, or their values hold a NUL byte "
                f"({', '.join(skipped[:5])})",
                {"vm": self.vm_name},
            )
        argv = [self.config.command, *self.config.args]
        try:
            async with ssh.open_guest(address) as guest:
                await command.launch(
                    guest,
                    job,
                    argv,
                    work_dir=self.config.work_dir,
                    guest_os=guest_os,
                    time_limit=self.config.timeout_seconds,
                    env=env,
                    shares_root=root,
                )
        except command.CommandError as exc:
            raise TartTrioError(str(exc)) from None
        except ssh.HostKeyMismatch:
            raise
        except ssh.GuestError as exc:
            raise RecoverableError(
                f"starting the command in VM {self.vm_name} failed: {exc}"
            ) from exc
        self._emit(f"Command {self.config.command!r} started in the guest", {"vm": self.vm_name})
        return job

    async def follow(
        self, state: DriverState, stdout: Sink, stderr: Sink, finish: Callable[[ExitResult], None]
    ) -> None:
        """Follow the command to its end: its output into the sinks, then ``finish`` with the
        task's result as soon as that output is delivered (the SSH sessions close after)."""
        watch = command.CommandWatch(
            self.address(state),
            state.command_job,
            command.offsets_path(state.runtime_dir),
            stdout,
            stderr,
            whole_lines=self.config.streams_guest_logs,
        )
        limit = self.config.timeout_seconds
        deadline = math.inf
        if limit:
            wall = state.command_started + limit + scripts.TIMEOUT_GRACE + TIMEOUT_BACKSTOP
            deadline = trio.current_time() + max(wall - time.time(), 0.0)
        failed: list[ssh.HostKeyMismatch] = []

        async def follow() -> None:
            try:
                await watch.run()
            except ssh.HostKeyMismatch as exc:
                failed.append(exc)
                watch.ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)  # closes its SSH sessions after `ended`
            with trio.move_on_at(deadline) as backstop:
                await watch.ended.wait()
            if backstop.cancelled_caught:
                nursery.cancel_scope.cancel()
                result = ExitResult(
                    exit_code=1,
                    err=f"the command did not end within its timeout of {self.config.timeout} "
                    "and the guest did not report it; the VM is powered off",
                )
            elif failed:
                result = ExitResult(exit_code=1, err=f"the command's output stopped: {failed[0]}")
            else:
                assert watch.outcome is not None
                result = self.outcome(watch.outcome, watch.reconnected)
            self.result = result
            _write_result(self.runtime_dir, result)
            await stdout.drained()
            await stderr.drained()
            finish(result)

    def outcome(self, outcome: Outcome, reconnected: bool) -> ExitResult:
        if outcome.how == "exited":
            code = outcome.exit_code
            signum = code - 128 if 128 < code <= 128 + 64 else 0
            err = ""
            if outcome.timed_out:
                err = (
                    f"the command did not finish within its timeout of {self.config.timeout} "
                    "and was killed"
                )
            return ExitResult(exit_code=code, signal=signum, err=err)
        if outcome.timed_out:
            return ExitResult(
                exit_code=128 + 9,
                signal=9,
                err=f"the command did not finish within its timeout of {self.config.timeout} "
                "and was killed (SIGKILL)",
            )
        if outcome.how == "lost" and self.sent_kill:
            return ExitResult(exit_code=128 + 9, signal=9)  # as asked: SIGKILL ends the runner too
        why = command.describe(outcome)
        if reconnected:
            why += " (its SSH connection had dropped)"
        return ExitResult(exit_code=1, err=why)

    async def send(self, state: DriverState | None, name: str) -> bool:
        """Send signal ``name`` (``kill -s`` form) to the command's process group."""
        if state is None:
            return False
        self.sent_kill = self.sent_kill or name == "KILL"
        with trio.move_on_after(SIGNAL_SECONDS):
            try:
                async with ssh.open_guest(self.address(state)) as guest:
                    return await command.send_signal(guest, state.command_job, name)
            except ssh.GuestError as exc:
                log.info(
                    "signalling the command over SSH failed",
                    extra={"vm": self.vm_name, "error": str(exc)},
                )
        return False

    def known_result(self) -> ExitResult | None:
        """How the command ended, from memory or from the kept result."""
        return self.result or read_result(self.runtime_dir)


def _write_result(runtime_dir: Path, result: ExitResult) -> None:
    """Keep the command's result beside the VM's status (recovery may need it later)."""
    try:
        fd = open_own_file(str(runtime_dir / "command.result"), os.O_WRONLY | os.O_CREAT)
    except OSError:
        return
    with os.fdopen(fd, "wb") as out:
        out.truncate()
        out.write(msgspec.json.encode(result))


def read_result(runtime_dir: Path) -> ExitResult | None:
    """The command's result as the task kept it (None: not known yet)."""
    try:
        fd = open_own_file(str(runtime_dir / "command.result"), os.O_RDONLY)
        with os.fdopen(fd, "rb") as raw:
            return msgspec.json.decode(raw.read(), type=ExitResult)
    except (OSError, msgspec.DecodeError):
        return None
