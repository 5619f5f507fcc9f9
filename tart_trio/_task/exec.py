"""Exec into a task's VM: script checks (ExecTask) and ``nomad alloc exec`` (streaming).

Every command runs over SSH as the task's ``ssh_user``, in its own SSH session on the
task's shared connection, with each argument quoted so that it reaches the guest intact.
Leaving a session early (timeout, cancelled stream, error) kills every process of that
session in the guest.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Final

import trio

from tart_trio._errors import TartTrioError
from tart_trio._groups import single_errors
from tart_trio._guest import session, ssh
from tart_trio._model import (
    ExecInput,
    ExecOutput,
    ExecStream,
    ExitResult,
    StdinClose,
    StdinData,
    TerminalResize,
)
from tart_trio._task.runner import TaskRunner

#: ExecTask keeps at most this many bytes of each of stdout and stderr; the rest is read
#: and dropped (the command is not stopped, and truncation is not an error).
OUTPUT_CAP: Final = 16 << 20
#: How long exec waits for a task that is still starting, or a guest that does not answer
#: SSH yet (e.g. right after a reboot), before giving up.
REACH_SECONDS: Final = 60.0
#: ExecTask's exit code when the command outlived its timeout and was killed (as timeout(1)).
TIMEOUT_EXIT_CODE: Final = 124
_STARTING_POLL: Final = 0.2

Receive = Callable[[], Awaitable[ExecInput | None]]
Send = Callable[[ExecStream, bytes], Awaitable[None]]


class TaskNotRunning(TartTrioError):
    """The task has no running VM to exec into."""


async def _address(runner: TaskRunner, within: float) -> ssh.GuestAddress:
    """The guest's SSH address once the task runs (waiting up to ``within`` seconds)."""
    with trio.move_on_after(within):
        while runner.phase == "starting" and not runner.exited.is_set():
            with trio.move_on_after(_STARTING_POLL):
                await runner.exited.wait()
    state = runner.state
    if runner.phase == "exited" or runner.exited.is_set():
        raise TaskNotRunning(f"task {runner.task.id} has exited: there is no VM to exec into")
    if state is None:
        raise TaskNotRunning(
            f"task {runner.task.id} is still starting: its VM was not up within {within:.0f}s"
        )
    return ssh.GuestAddress(
        host=state.ip,
        user=runner.config.ssh_user,
        password=runner.config.ssh_password,
        host_key=state.host_key,
    )


@asynccontextmanager
async def _session(
    runner: TaskRunner, within: float, argv: Sequence[str], pty: session.PtySize | None = None
) -> AsyncIterator[session.RemoteProcess]:
    """``argv`` in its own session on the task's shared SSH connection."""
    began = trio.current_time()
    address = await _address(runner, within)
    remaining = max(within - (trio.current_time() - began), 1.0)
    async with runner.exec_link.process(address, remaining, argv, pty=pty) as process:
        yield process


class _Capture:
    """Keeps the first ``limit`` bytes written to it."""

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit

    def add(self, data: bytes) -> None:
        room = self._limit - len(self._buf)
        if room > 0:
            self._buf.extend(data[:room])

    def value(self) -> bytes:
        return bytes(self._buf)


async def _drain(read: Callable[[], Awaitable[bytes]], into: Callable[[bytes], None]) -> None:
    while data := await read():
        into(data)


async def run_command(runner: TaskRunner, argv: Sequence[str], time_limit: float) -> ExecOutput:
    """Run ``argv`` to completion without stdin; kill it in the guest after ``time_limit`` s.

    A command that outlives ``time_limit`` (0: no limit) gives what it printed so far, a
    note on stderr and exit code 124.
    """
    if not argv:
        raise TartTrioError("exec needs a command")
    limit = time_limit if time_limit > 0 else math.inf
    stdout, stderr = _Capture(OUTPUT_CAP), _Capture(OUTPUT_CAP)
    started = False
    ended: session.RemoteExit | None = None
    with trio.move_on_after(limit):
        async with _session(runner, min(REACH_SECONDS, limit), argv) as process:
            started = True
            await process.close_stdin()
            with single_errors():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_drain, process.read_stdout, stdout.add)
                    nursery.start_soon(_drain, process.read_stderr, stderr.add)
            ended = await process.wait()
    if ended is not None:
        result = ExitResult(exit_code=ended.exit_code, signal=ended.signal)
        return ExecOutput(stdout=stdout.value(), stderr=stderr.value(), result=result)
    if not started:
        raise ssh.GuestError(
            f"the VM of task {runner.task.id} was not reachable over SSH within the exec "
            f"timeout of {time_limit:g}s"
        )
    note = f"\ntart driver: the command did not finish within {time_limit:g}s and was killed\n"
    return ExecOutput(
        stdout=stdout.value(),
        stderr=stderr.value() + note.encode(),
        result=ExitResult(exit_code=TIMEOUT_EXIT_CODE),
    )


async def _forward_input(process: session.RemoteProcess, receive: Receive, tty: bool) -> None:
    """Client input into the session until the client stops sending."""
    stdin_open = True
    while (item := await receive()) is not None:
        match item:
            case StdinData(data=data) if stdin_open and data:
                try:
                    await process.write(data)
                except ssh.GuestError:
                    stdin_open = False  # the command is gone or closed its stdin
            case StdinClose() if stdin_open:
                stdin_open = False
                with suppress(ssh.GuestError):
                    await process.close_stdin()
            case TerminalResize(width=width, height=height) if tty and width and height:
                with suppress(ssh.GuestError):
                    await process.resize(session.PtySize(width=width, height=height))
    if stdin_open:
        with suppress(ssh.GuestError):
            await process.close_stdin()


async def _pump(read: Callable[[], Awaitable[bytes]], stream: ExecStream, send: Send) -> None:
    while data := await read():
        await send(stream, data)


async def run_session(
    runner: TaskRunner, argv: Sequence[str], tty: bool, receive: Receive, send: Send
) -> ExitResult:
    """An interactive session: client input in, output out as it comes, until the command ends.

    With ``tty`` the command gets a PTY (resized on each resize input) and all its output
    arrives as stdout. Cancelling the call kills the command in the guest.
    """
    if not argv:
        raise TartTrioError("exec needs a command")
    pty = session.PtySize() if tty else None
    async with _session(runner, REACH_SECONDS, argv, pty) as process:
        with single_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward_input, process, receive, tty)
                async with trio.open_nursery() as outputs:
                    outputs.start_soon(_pump, process.read_stdout, "stdout", send)
                    outputs.start_soon(_pump, process.read_stderr, "stderr", send)
                ended = await process.wait()
                nursery.cancel_scope.cancel()
    return ExitResult(exit_code=ended.exit_code, signal=ended.signal)
