"""Commands in their own SSH sessions: bounded runs, PTYs, and one shared connection per task.

A session's command reports its guest-side session ID first, so leaving early (a timeout,
a cancelled stream, an error) kills every process it started in the guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from tart_trio._bridge import run_aio
from tart_trio._guest.ssh import (
    _CHUNK,
    CONNECT_SECONDS,
    Gate,
    Guest,
    GuestAddress,
    GuestError,
    _kill,
    reach_guest,
    shell_join,
)

if TYPE_CHECKING:
    import asyncssh
else:
    from tart_trio._guest.ssh import asyncssh

KILL_SECONDS: Final = 5.0
TERM_TYPE: Final = "xterm-256color"
_MARKER_LIMIT: Final = 1 << 20
# Runs as ``sh -c WRAPPER TOKEN ARGV...``: report this shell's PID, which is the session
# ID sshd gave the command (it calls setsid for every session), then become the command.
_WRAPPER: Final = 'printf "%s %s\\n" "$0" "$$"; exec "$@"'


class PtySize(msgspec.Struct, frozen=True):
    """A terminal size in character cells."""

    width: int = 80
    height: int = 24


class RemoteExit(msgspec.Struct, frozen=True):
    """How a remote command ended: its exit status, or 128+N and N when signal N ended it."""

    exit_code: int
    signal: int = 0


async def _read_marker(stdout: Any, token: bytes, buf: bytearray) -> int | None:
    """Read until the wrapper's ``TOKEN PID`` line; leave what follows it in ``buf``.

    What comes before the line is the login shell's, never the command's (the wrapper
    prints the line before it becomes the command): a ``.zshenv`` that greets, say. It is
    dropped, so that it cannot pass for the first bytes of a command's output.
    """
    while True:
        at = buf.find(token + b" ")
        end = buf.find(b"\n", at) if at >= 0 else -1
        if end >= 0:
            field = bytes(buf[at + len(token) + 1 : end]).strip()
            del buf[: end + 1]
            return int(field) if field.isdigit() else None
        if len(buf) > _MARKER_LIMIT:
            return None
        chunk = await stdout.read(_CHUNK)
        if not chunk:
            return None
        buf.extend(chunk)


class RemoteProcess:
    """A command running in the guest in its own SSH session (trio-facing).

    ``session_id`` is the guest-side session of the command (``None`` if the login shell
    never reported it); :meth:`kill` ends every process in it.
    """

    def __init__(self, guest: Guest, process: Any, session_id: int | None, early: bytes) -> None:
        self._guest = guest
        self._process = process
        self.session_id = session_id
        self._early = early
        self._detached = False

    def _error(self, exc: BaseException) -> GuestError:
        return GuestError(f"SSH session on {self._guest.address.host} failed: {exc}")

    @property
    def finished(self) -> bool:
        """Whether the guest reported the command's exit."""
        return self._process.exit_status is not None or self._process.exit_signal is not None

    async def _read(self, stream: Any) -> bytes:
        try:
            data: bytes = await run_aio(stream.read, _CHUNK)
        except (OSError, asyncssh.Error) as exc:
            raise self._error(exc) from exc
        return data

    async def read_stdout(self) -> bytes:
        """The next stdout bytes (with a PTY: all output); ``b""`` at the end."""
        if self._early:
            data, self._early = self._early, b""
            return data
        return await self._read(self._process.stdout)

    async def pipe_stdout(self, on_data: Callable[[bytes], None], gate: Gate | None = None) -> None:
        """Hand every stdout chunk to ``on_data`` until the command closes its stdout.

        The loop runs on the asyncio side (no bridge crossing per chunk); while ``gate``
        is closed the channel is not read, so the command in the guest waits.
        """
        if self._early:
            data, self._early = self._early, b""
            on_data(data)
        await self._call(self._pipe_aio, on_data, gate)

    async def _pipe_aio(self, on_data: Callable[[bytes], None], gate: Gate | None) -> None:
        while chunk := await self._process.stdout.read(_CHUNK):
            on_data(chunk)
            if gate is not None and not gate.is_open:
                await gate.wait_open()

    async def detach(self) -> None:
        """Close the channel and leave the command running in the guest.

        Without a terminal sshd does not signal a session's processes when its channel
        closes, so a command whose stdio no longer points at the channel lives on.
        """
        self._detached = True
        with trio.CancelScope(shield=True):
            await run_aio(_close_aio, self._process)

    async def read_stderr(self) -> bytes:
        """The next stderr bytes (nothing with a PTY); ``b""`` at the end."""
        return await self._read(self._process.stderr)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            await run_aio(fn, *args)
        except (OSError, asyncssh.Error) as exc:
            raise self._error(exc) from exc

    async def write(self, data: bytes) -> None:
        """Send stdin bytes; waits while the guest is not reading (backpressure)."""

        async def write_aio() -> None:
            self._process.stdin.write(data)
            await self._process.stdin.drain()

        await self._call(write_aio)

    async def close_stdin(self) -> None:
        """Send EOF on stdin."""

        async def eof_aio() -> None:
            self._process.stdin.write_eof()

        await self._call(eof_aio)

    async def resize(self, size: PtySize) -> None:
        """Change the PTY's size (the command gets SIGWINCH)."""

        async def resize_aio() -> None:
            self._process.change_terminal_size(size.width, size.height)

        await self._call(resize_aio)

    async def wait(self) -> RemoteExit:
        """Wait until the session closes; how the command ended."""
        await self._call(self._process.wait_closed)
        status, signalled = self._process.exit_status, self._process.exit_signal
        if status is not None:
            return RemoteExit(exit_code=status)
        if signalled is not None:
            number = _signal_number(signalled[0])
            return RemoteExit(exit_code=128 + number, signal=number)
        raise GuestError(
            f"the SSH session on {self._guest.address.host} ended without an exit status "
            "(the connection was lost)"
        )

    async def kill(self) -> None:
        """SIGKILL every process of the command's session in the guest; close the channel."""
        with trio.CancelScope(shield=True), trio.move_on_after(KILL_SECONDS):
            await run_aio(self._kill_aio)

    async def close(self) -> None:
        """Kill the command if it still runs (unless detached), then close its channel."""
        if not self.finished and not self._detached:
            await self.kill()
        with trio.CancelScope(shield=True):
            await run_aio(_close_aio, self._process)

    async def _kill_aio(self) -> None:
        sid = self.session_id
        if sid is not None:
            command = f"pkill -KILL -s {sid} || kill -KILL -- -{sid}"
            with contextlib.suppress(OSError, asyncssh.Error, asyncio.TimeoutError):
                await asyncio.wait_for(self._guest._conn.run(command), KILL_SECONDS)
        _kill(self._process)


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return int(signal.SIGKILL)


async def _start_aio(
    conn: asyncssh.SSHClientConnection, argv: Sequence[str], pty: PtySize | None
) -> tuple[Any, int | None, bytes]:
    token = f"tart-exec-{secrets.token_hex(8)}"
    command = shell_join(["exec", "/bin/sh", "-c", _WRAPPER, token, *argv])
    options: dict[str, Any] = {}
    if pty is not None:
        options = {
            "request_pty": "force",
            "term_type": TERM_TYPE,
            "term_size": (pty.width, pty.height),
        }
    process = await conn.create_process(command, encoding=None, **options)
    buf = bytearray()
    try:
        sid = await _read_marker(process.stdout, token.encode(), buf)
    except BaseException:
        # Cancelled before the command reported its session: learn it briefly, then kill.
        with contextlib.suppress(Exception):
            sid = await asyncio.wait_for(
                _read_marker(process.stdout, token.encode(), buf), KILL_SECONDS
            )
            if sid is not None:
                kill = f"pkill -KILL -s {sid} || kill -KILL -- -{sid}"
                await asyncio.wait_for(conn.run(kill), KILL_SECONDS)
        _kill(process)
        raise
    return process, sid, bytes(buf)


async def open_process(
    guest: Guest, argv: Sequence[str], *, pty: PtySize | None = None
) -> RemoteProcess:
    """Run ``argv`` (each word quoted) in a new SSH session, with a PTY when ``pty`` is set.

    The caller closes it (:meth:`RemoteProcess.close`), which kills every process of the
    session in the guest if the command has not finished.
    """
    if not argv:
        raise GuestError("no command given")
    try:
        process, sid, early = await run_aio(_start_aio, guest._conn, list(argv), pty)
    except (OSError, asyncssh.Error) as exc:
        raise GuestError(f"cannot start a command on {guest.address.host}: {exc}") from exc
    return RemoteProcess(guest, process, sid, early)


async def _close_aio(process: Any) -> None:
    process.close()


# ---- one connection per task for exec ----------------------------------------------------

#: Sessions that share a task's exec connection at once. OpenSSH's sshd allows 10 sessions
#: per connection (MaxSessions), and macOS keeps that default; more at once get a
#: connection of their own.
SHARED_SESSIONS: Final = 8


class SharedGuest:
    """A task's SSH connection for exec sessions: opened on first use, reopened when lost.

    Script checks run every few seconds; sharing one login spares the guest's sshd a key
    exchange and a login each time. A connection that turns out to be dead (the guest
    rebooted) is replaced before anything runs on it; a live one that will not open another
    session (sshd's MaxSessions) leaves that session to a connection of its own, as do
    sessions beyond SHARED_SESSIONS. The task closes it when its VM ends.
    """

    def __init__(self) -> None:
        self._guest: Guest | None = None
        self._lock = trio.Lock()
        self._busy = 0
        self._closed = False

    @asynccontextmanager
    async def process(
        self,
        address: GuestAddress,
        within: float,
        argv: Sequence[str],
        *,
        pty: PtySize | None = None,
    ) -> AsyncIterator[RemoteProcess]:
        """A command in its own session; ``within``: how long to retry reaching the guest."""
        shared = self._busy < SHARED_SESSIONS
        own: Guest | None = None
        if shared:
            self._busy += 1
        try:
            remote = await self._open_shared(address, within, argv, pty) if shared else None
            if remote is None:  # every shared session busy, or the guest refused one more
                own = await reach_guest(address, within)
                remote = await open_process(own, argv, pty=pty)
            try:
                yield remote
            finally:
                await remote.close()
        finally:
            if shared:
                self._busy -= 1
            if own is not None:
                await own.aclose()

    async def _open_shared(
        self, address: GuestAddress, within: float, argv: Sequence[str], pty: PtySize | None
    ) -> RemoteProcess | None:
        """A session on the shared connection; None if the guest will not open another."""
        while True:
            guest, reused = await self._connection(address, within)
            try:
                # A reused connection may be dead without knowing it yet (the guest rebooted
                # and a packet is lost on the way): bound the wait, then start afresh.
                with trio.fail_after(CONNECT_SECONDS if reused else math.inf):
                    return await open_process(guest, argv, pty=pty)
            except trio.TooSlowError:
                await self._discard(guest)
            except GuestError:
                if not guest.closed:
                    return None  # alive but refusing a session (sshd's MaxSessions)
                await self._discard(guest)
                if not reused:
                    raise

    async def _connection(self, address: GuestAddress, within: float) -> tuple[Guest, bool]:
        async with self._lock:
            self._refuse_if_closed()
            current = self._guest
            if current is not None and not current.closed and current.address == address:
                return current, True
            self._guest = None
            if current is not None:
                await current.aclose()
            guest = await reach_guest(address, within)
            try:
                self._refuse_if_closed()  # the VM may have ended while we were connecting
            except GuestError:
                await guest.aclose()
                raise
            self._guest = guest
            return guest, False

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise GuestError("the VM has ended; its SSH connection is closed")

    async def _discard(self, guest: Guest) -> None:
        async with self._lock:
            if self._guest is guest:
                self._guest = None
        await guest.aclose()

    async def aclose(self) -> None:
        """Close the connection; later sessions are refused."""
        self._closed = True
        guest, self._guest = self._guest, None
        if guest is not None:
            await guest.aclose()
