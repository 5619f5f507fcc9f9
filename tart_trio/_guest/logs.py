"""A task's guest logs: ``log_command`` over SSH into the stdout sink, for the VM's life.

Reconnects with backoff while the guest boots or reboots, resumes from the saved cursor
after a plugin restart (replaying with ``log show`` while the live stream is held), and
stops reading the channel while logmon is behind (``sink``), so no line is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import trio

from tart_trio._groups import single_errors
from tart_trio._guest import ssh
from tart_trio._guest.cursor import (
    Cursor,
    CursorFile,
    HeldOutput,
    LinePump,
    load_cursor,
    resume_command,
)
from tart_trio._guest.sink import Checkpoints, Sink

log = logging.getLogger("logs")
RETRY_MIN: Final = 0.5
RETRY_MAX: Final = 10.0
#: Exit codes of a shell that could not run the command at all (126: not executable,
#: 127: not found): running it again cannot help.
NOT_RUNNABLE: Final = (126, 127)
REPLAY_LIMIT: Final = 64 << 20
REPLAY_HOLD_LIMIT: Final = 16 << 20


async def pump_logs(
    address: ssh.GuestAddress,
    vm_name: str,
    cursor_file: Path,
    command: Sequence[str],
    emit: Callable[[str, dict[str, str]], None],
    sink: Sink,
) -> None:
    """Stream the guest's logs into ``sink`` until cancelled (when the VM ends).

    ``cursor_file`` holds where the last run stopped (``cursor.cursor_path``); the stream
    resumes after it.
    """
    saved = CursorFile(cursor_file)
    fed = _Fed(load_cursor(cursor_file), Checkpoints[Cursor](sink, saved.save))
    try:
        await _pump(address, vm_name, command, emit, sink, cursor_file, fed)
    finally:
        fed.checkpoints.close()
        saved.close()


async def _pump(
    address: ssh.GuestAddress,
    vm_name: str,
    command: Sequence[str],
    emit: Callable[[str, dict[str, str]], None],
    sink: Sink,
    cursor_file: Path,
    fed: _Fed,
) -> None:
    delay = RETRY_MIN
    reported: int | None = None
    while True:
        began = trio.current_time()
        status: int | None = None
        try:
            async with ssh.open_guest(address) as guest:
                status = await _stream(guest, command, sink, cursor_file, fed)
        except ssh.HostKeyMismatch as exc:
            emit(f"Log streaming stopped: {exc}", {"vm": vm_name})
            return
        except ssh.GuestError as exc:
            log.debug("log stream unavailable", extra={"vm": vm_name, "error": str(exc)})
        if status in NOT_RUNNABLE:
            emit(
                f"Log streaming stopped: log_command {command[0]!r} cannot run in the "
                f"guest (exit code {status}). Set log_command in the task's config, "
                'e.g. ["journalctl", "--follow"] for Linux guests',
                {"vm": vm_name, "exit_code": str(status)},
            )
            return
        if status is not None and status != reported:
            reported = status
            emit(
                f"log_command {command[0]!r} exited with code {status} in the guest; "
                "running it again",
                {"vm": vm_name, "exit_code": str(status)},
            )
        if trio.current_time() - began >= RETRY_MAX:
            delay = RETRY_MIN  # it ran a while: come back quickly after a reboot
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


class _Fed:
    """The cursor of the last line fed to the sink (ahead of the saved, delivered one),
    and the checkpoints that save a cursor once its lines reached logmon."""

    def __init__(self, cursor: Cursor | None, checkpoints: Checkpoints[Cursor]) -> None:
        self.cursor = cursor
        self.checkpoints = checkpoints

    def mark(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.checkpoints.mark(cursor)


async def _stream(
    guest: ssh.Guest, command: Sequence[str], sink: Sink, cursor_file: Path, fed: _Fed
) -> int:
    """Stream until ``command`` ends; its exit status.

    A reconnect resumes after the last line fed to the sink (lines may still wait there);
    the cursor file, read after a plugin restart, holds the last line logmon received.
    """
    replay = resume_command(command, fed.cursor) if fed.cursor is not None else None
    pump = LinePump(sink.feed, cursor_file, skipping_untimed=replay is not None, resume=fed.cursor)
    pump.on_cursor = fed.mark
    try:
        if replay is None:
            return await guest.stream(command, pump.feed, gate=sink.gate)
        reading = trio.Event()  # the live stream delivered a line (or ended)
        live = HeldOutput(pump.feed, REPLAY_HOLD_LIMIT, sink.hold, sink.unhold, reading.set)
        running = trio.Event()
        ended: list[int] = []

        async def stream_live() -> None:
            try:
                ended.append(await guest.stream(command, live.feed, running.set, sink.gate))
            finally:
                reading.set()

        try:
            with single_errors():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream_live)
                    await running.wait()  # the live stream runs before the replay is taken
                    replayed = await guest.run(replay, max_output=REPLAY_LIMIT)
                    pump.feed(replayed.stdout)
                    pump.end_of_replay()
                    # The remote process runs, but may read the log only after the replay
                    # did: lines logged in between are in neither. Its first line was logged
                    # before it arrived, so a replay taken now reaches it.
                    await reading.wait()
                    first, cursor = live.first_timestamp, pump.cursor
                    if first is not None and cursor is not None and first >= cursor.timestamp:
                        catch_up = resume_command(command, cursor)
                        if catch_up is not None:
                            replayed = await guest.run(catch_up, max_output=REPLAY_LIMIT)
                            pump.feed(replayed.stdout)
                            pump.end_of_replay()
                    live.release()
        finally:
            live.abandon()
        return ended[0]
    finally:
        pump.close()
