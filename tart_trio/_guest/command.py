"""A task's ``command`` in the guest: detached from SSH, recorded in files, resumable.

The command runs under a small POSIX ``sh`` runner (the guest's ``/bin/sh``: bash 3.2 on
macOS, dash or bash on Linux; no ``setsid``, no GNU-only flags). Everything lives in a job
directory in the guest user's home, ``~/.nomad-tart/<job>/``:

``out``, ``err``  the command's stdout and stderr, appended as it writes them;
``pid``           the runner's pid and start time (a reboot or a kill is seen as "gone");
``status``        ``timeout`` when the time limit fired, then ``exit CODE OUTSIZE ERRSIZE``;
``runner.log``    what the runner's shell itself says (job reports such as "Terminated").

The runner is the SSH session's own shell: sshd made it the leader of a new session and
process group, and the command runs in the foreground under it, in that group. Its stdio
points at the files, so losing the SSH connection, or the plugin, does not touch it. It
traps the usual signals (a trap waits for the foreground command), so signalling the
group reaches the command and leaves the runner to record the exit status.

The plugin follows ``out`` and ``err`` with ``tail -c +N -f`` in their own SSH sessions,
each into its sink, from byte offsets saved once logmon has the bytes; a third session
waits on ``status``. After a lost connection the followers start again from what was fed,
after a restart of the plugin from the saved offsets: no gap, and no repeat unless the
plugin was killed in the instant between a write to the FIFO and saving its offset (then
that one write, at most ``fifo.ATOMIC_WRITE`` bytes, comes again: see ``sink``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec
import trio

from tart_trio._guest import scripts, session, ssh
from tart_trio._guest.cursor import CursorFile
from tart_trio._guest.sink import Checkpoints, Sink
from tart_trio._guest.status import Outcome, StatusReader
from tart_trio._host import fifo

log = logging.getLogger("command")

#: Longest line of the command's stdout held back while it shares the stdout sink with
#: guest logs (``guest_logs = true``), as for guest log lines.
LINE_LIMIT: Final = 1 << 20
#: Most the launch may print before the runner's answer (a login shell's greetings).
LAUNCH_REPLY_MAX: Final = 64 << 10
RETRY_MIN: Final = 0.5
RETRY_MAX: Final = 5.0


class CommandError(ssh.GuestError):
    """The command could not be started in the guest."""


class Offsets(msgspec.Struct, frozen=True):
    """Bytes of the command's stdout and stderr that logmon has."""

    out: int = 0
    err: int = 0


async def launch(
    guest: ssh.Guest,
    job: str,
    argv: Sequence[str],
    *,
    work_dir: str,
    guest_os: str,
    time_limit: float,
    env: bytes,
    shares_root: str = "",
) -> int:
    """Start ``argv`` detached in the guest; return the runner's pid there.

    ``env`` (from :func:`scripts.env_file`) travels on the session's stdin, never in an argv.
    ``shares_root``: where the task's shares are, when not where Tart puts them.
    """
    root = shares_root or scripts.shares_root(guest_os)
    limit = str(int(-(-time_limit // 1))) if time_limit > 0 else "0"
    args = [job, root, guest_os, limit, str(scripts.TIMEOUT_GRACE), work_dir or root, *argv]
    # The first line is the password for sudo (a password with a line break cannot be
    # sent so; the env file that follows must never get part of it).
    password = guest.address.password if "\n" not in guest.address.password else ""
    process = await session.open_process(guest, scripts.script(scripts.LAUNCH_SCRIPT, *args))
    try:
        await process.write(f"{password}\n".encode() + env)
        await process.close_stdin()
        output = bytearray()
        reply: int | str | None = None
        while reply is None and len(output) < LAUNCH_REPLY_MAX:
            data = await process.read_stdout()
            if not data:
                break
            done = output.rfind(b"\n") + 1  # lines before it were looked at already
            output += data[: LAUNCH_REPLY_MAX - len(output)]
            reply = launch_reply(output[done:])
        if isinstance(reply, int):
            await process.detach()
            return reply
    finally:
        await process.close()
    reason = reply or "the runner said nothing"
    raise CommandError(f"the command could not be started in the guest: {reason}")


def launch_reply(output: bytes | bytearray) -> int | str | None:
    """What the launch said so far: the runner's pid, the reason it failed, or None yet.

    The guest user's shell may print text of its own before the runner speaks (a
    ``.zshenv``, a ``.bashrc`` under sshd), so every complete line is looked at; a pid that
    is not a plain decimal of a real process id counts as no answer.
    """
    for raw in bytes(output).split(b"\n")[:-1]:
        words = raw.decode(errors="replace").split()
        if words[:1] == ["tart-command-started"]:
            if (
                len(words) == 2
                and re.fullmatch("[0-9]{1,10}", words[1])
                and 0 < int(words[1]) < 2**31
            ):
                return int(words[1])
            return f"it reported no process id ({' '.join(words)[:80]!r})"
        if words[:1] == ["tart-command-error"]:
            return " ".join(words[1:])[:500] or "no reason given"
    return None


async def send_signal(guest: ssh.Guest, job: str, name: str) -> bool:
    """Signal the command's process group; False when it is not running (any more)."""
    result = await guest.run(scripts.script(scripts.SIGNAL_SCRIPT, job, name))
    return result.exit_code == 0


class _Stream:
    """One of the command's output files on its way into a sink."""

    def __init__(
        self,
        file: str,
        sink: Sink,
        start: int,
        checkpoints: Checkpoints[int],
        prefix_lines: bool,
        on_complete: Callable[[], None],
    ) -> None:
        self.file = file
        self._on_complete = on_complete
        self.sink = sink
        self.received = start
        self.fed = start
        self.end: int | None = None
        self.scope: trio.CancelScope | None = None
        self._checkpoints = checkpoints
        self._whole_lines = prefix_lines
        self._partial = bytearray()

    @property
    def complete(self) -> bool:
        return self.end is not None and self.received >= self.end

    def set_end(self, end: int) -> None:
        self.end = end
        if self.complete and self._partial:
            self._feed(bytes(self._partial))
            self._partial.clear()
        self._stop_if_complete()

    def on_data(self, data: bytes) -> None:
        if self.end is not None:
            data = data[: max(self.end - self.received, 0)]
        self.received += len(data)
        if self._whole_lines:  # the stdout sink is shared with guest logs: whole lines only
            self._whole_lines_of(data)
        elif data:
            self._feed(data)
        self._stop_if_complete()

    def _whole_lines_of(self, data: bytes) -> None:
        """Feed complete lines, hold the unfinished one; past ``LINE_LIMIT`` it goes out
        with a line break of its own (as guest log lines do), so a line without end can
        neither grow the plugin's memory nor keep the sink's backpressure from working."""
        cut = data.rfind(b"\n") + 1
        if self.complete:
            cut = len(data)
        if cut:
            self._feed(bytes(self._partial) + data[:cut])
            self._partial.clear()
            data = data[cut:]
        self._partial += data
        while len(self._partial) >= LINE_LIMIT:
            line = bytes(self._partial[:LINE_LIMIT])
            del self._partial[:LINE_LIMIT]
            self._feed(line, b"\n")

    def _feed(self, data: bytes, extra: bytes = b"") -> None:
        """Feed ``data`` (and ``extra``, which is not the guest's) in pieces the sink
        writes whole, each followed by its offset in the guest's file."""
        chunk = data + extra if extra else data
        base = self.fed
        for start, end in fifo.pieces(chunk):
            self.sink.feed(chunk[start:end])
            self.fed = base + min(end, len(data))  # where a follower resumes
            self._checkpoints.mark(self.fed)

    def close(self) -> None:
        self._checkpoints.close()

    def restart_point(self) -> int:
        """Where a new follower starts: after the bytes fed (a held partial line is re-read)."""
        self._partial.clear()
        self.received = self.fed
        return self.fed

    def _stop_if_complete(self) -> None:
        if self.complete:
            self._on_complete()
            if self.scope is not None:
                self.scope.cancel()


class CommandWatch:
    """Follows a started command until it ended and its output is in the sinks."""

    def __init__(
        self,
        address: ssh.GuestAddress,
        job: str,
        offsets_file: Path,
        stdout: Sink,
        stderr: Sink,
        *,
        whole_lines: bool = False,
    ) -> None:
        self._address = address
        self._job = job
        self._saved = CursorFile(offsets_file)
        start = _load_offsets(offsets_file)
        self._delivered = {"out": start.out, "err": start.err}
        self._streams = [
            self._stream("out", stdout, start.out, whole_lines),
            self._stream("err", stderr, start.err, False),
        ]
        self.outcome: Outcome | None = None
        self.reconnected = False
        #: Set once the outcome is known and all output up to it reached the sinks (the
        #: sessions are closed after that).
        self.ended = trio.Event()

    def _stream(self, file: str, sink: Sink, start: int, whole_lines: bool) -> _Stream:
        def save(offset: int) -> None:
            self._delivered[file] = offset
            self._saved.save(Offsets(out=self._delivered["out"], err=self._delivered["err"]))

        return _Stream(file, sink, start, Checkpoints[int](sink, save), whole_lines, self._check)

    def _check(self) -> None:
        if self.outcome is not None and all(s.complete for s in self._streams):
            self.ended.set()

    async def run(self) -> Outcome:
        """Until the outcome is known and all output up to it reached the sinks.

        Reconnects (with backoff) when the connection drops; a changed host key fails.
        """
        delay = RETRY_MIN
        try:
            while True:
                began = trio.current_time()
                error = "the connection closed"
                try:
                    async with ssh.open_guest(self._address) as guest:
                        await self._follow(guest)
                except ssh.HostKeyMismatch:
                    raise
                except ssh.GuestError as exc:
                    error = str(exc)
                if self.outcome is not None and all(s.complete for s in self._streams):
                    return self.outcome
                self.reconnected = True
                if trio.current_time() - began >= RETRY_MAX:
                    delay = RETRY_MIN  # it ran a while: come back quickly after a reboot
                log.debug("command output unavailable", extra={"error": error, "retry_in": delay})
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        finally:
            for stream in self._streams:
                stream.close()
            self._saved.close()

    async def _follow(self, guest: ssh.Guest) -> None:
        """Both followers and the waiter on one connection; one GuestError if it fails."""
        try:
            async with trio.open_nursery() as nursery:
                for stream in self._streams:
                    if not stream.complete:
                        nursery.start_soon(self._follow_one, guest, stream)
                if self.outcome is None:
                    await self._wait_outcome(guest)
        except BaseExceptionGroup as group:
            failures, rest = group.split(ssh.GuestError)
            if rest is not None or failures is None:
                raise
            leaves = list(_leaves(failures))
            mismatch = [e for e in leaves if isinstance(e, ssh.HostKeyMismatch)]
            raise (mismatch or leaves)[0] from None

    async def _follow_one(self, guest: ssh.Guest, stream: _Stream) -> None:
        """Follow one output file; a follower that ends by itself (the guest removed the
        file, or killed the follower) is started again on this connection after a pause
        that doubles each time, while the waiter goes on learning the outcome."""
        delay = RETRY_MIN
        while True:
            began = trio.current_time()
            with trio.CancelScope() as stream.scope:
                start = stream.restart_point()
                argv = scripts.script(scripts.FOLLOW_SCRIPT, self._job, stream.file, str(start + 1))
                process = await session.open_process(guest, argv)
                try:
                    await process.pipe_stdout(stream.on_data, stream.sink.gate)
                finally:
                    await process.detach()  # see _leave
            stream.scope = None
            if stream.complete:
                return
            if trio.current_time() - began >= RETRY_MAX:
                delay = RETRY_MIN  # it ran a while: come back quickly
            log.debug(
                "command output unavailable",
                extra={"error": f"following the command's {stream.file} ended", "retry_in": delay},
            )
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _wait_outcome(self, guest: ssh.Guest) -> None:
        reader = StatusReader()
        done = trio.Event()

        def on_data(data: bytes) -> None:
            settled = reader.feed(data)
            if settled is not None and not done.is_set():
                self._settle(settled.outcome, [settled.out_end, settled.err_end])
                done.set()

        process = await session.open_process(guest, scripts.script(scripts.WAIT_SCRIPT, self._job))
        try:
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    await process.pipe_stdout(on_data)
                    done.set()

                nursery.start_soon(read)
                await done.wait()
                nursery.cancel_scope.cancel()
        finally:
            await process.detach()  # see _leave
        if self.outcome is None:
            raise ssh.GuestError("waiting for the command ended without a status")

    # _leave: the followers and the waiter are left running when their channels close:
    # killing each costs a round trip, and they end by themselves soon (a follower at its
    # next write into a closed channel, the waiter when the runner is gone), or with the
    # VM, which is powered off as soon as the command has ended.

    def _settle(self, outcome: Outcome, ends: Sequence[int]) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        for stream, end in zip(self._streams, ends, strict=True):
            known = outcome.how in ("exited", "lost")
            stream.set_end(end if known else max(end, stream.fed))
        self._check()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _load_offsets(path: Path) -> Offsets:
    try:
        return msgspec.json.decode(path.read_bytes().strip(), type=Offsets)
    except (OSError, msgspec.DecodeError):
        return Offsets()


def offsets_path(runtime_dir: str) -> Path:
    """Where a task's command output offsets live."""
    return Path(runtime_dir) / "command.offsets"


def describe(outcome: Outcome) -> str:
    """A sentence for an outcome without an exit status."""
    if outcome.how == "malformed":
        return (
            "the command's status file in the guest holds a line the runner never writes "
            f"({outcome.detail!r}): something in the guest wrote it, so the command's exit "
            "status is unknown"
        )
    if outcome.how == "missing":
        return "the command's runner never started in the guest (its job directory is missing)"
    return (
        "the command's runner in the guest stopped without recording an exit status: the "
        "guest rebooted, or something in the guest killed the runner"
    )
