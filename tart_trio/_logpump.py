"""A task's guest logs: ``log_command`` over SSH into the stdout FIFO, for the VM's life.

Reconnects with backoff while the guest boots or reboots, resumes from the saved cursor
after a plugin restart (replaying with ``log show`` while the live stream is held), and
flushes what logmon could not take yet as soon as the FIFO is writable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import trio

from tart_trio import _guest
from tart_trio._fifo import FifoWriter
from tart_trio._groups import single_errors
from tart_trio._logcursor import HeldOutput, LinePump, cursor_path, load_cursor, resume_command
from tart_trio._state import DriverState

log = logging.getLogger("logs")
RETRY_MAX: Final = 10.0
REPLAY_LIMIT: Final = 64 << 20
REPLAY_HOLD_LIMIT: Final = 16 << 20


async def pump_logs(
    state: DriverState,
    command: Sequence[str],
    emit: Callable[[str, dict[str, str]], None],
) -> None:
    """Stream the guest's logs until cancelled (when the VM ends)."""
    writer = FifoWriter(state.stdout_path)
    address = _guest.GuestAddress(
        host=state.ip,
        user=state.task_config.ssh_user,
        password=state.task_config.ssh_password,
        host_key=state.host_key,
    )
    cursor_file = cursor_path(state.runtime_dir)
    delay = 0.5
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush_when_writable, writer)
            while True:
                try:
                    async with _guest.open_guest(address) as guest:
                        delay = 0.5
                        await _stream(guest, command, writer, cursor_file)
                except _guest.HostKeyMismatch as exc:
                    emit(f"Log streaming stopped: {exc}", {"vm": state.vm_name})
                    nursery.cancel_scope.cancel()
                    return
                except _guest.GuestError as exc:
                    log.debug(
                        "log stream unavailable", extra={"vm": state.vm_name, "error": str(exc)}
                    )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
    finally:
        writer.close()


async def _stream(
    guest: _guest.Guest, command: Sequence[str], writer: FifoWriter, cursor_file: Path
) -> None:
    cursor = load_cursor(cursor_file)
    replay = resume_command(command, cursor) if cursor is not None else None
    pump = LinePump(writer.write, cursor_file, skipping_untimed=replay is not None)
    try:
        if replay is None:
            await guest.stream(command, pump.feed)
            return
        live = HeldOutput(pump.feed, REPLAY_HOLD_LIMIT)
        running = trio.Event()
        with single_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guest.stream, command, live.feed, running.set)
                await running.wait()  # the live stream runs before the replay is taken
                replayed = await guest.run(replay, max_output=REPLAY_LIMIT)
                pump.feed(replayed.stdout)
                pump.end_of_replay()
                live.release()
    finally:
        pump.close()


class _Wakeup:
    """A re-arming event: ``set`` wakes the next ``wait`` once."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


async def flush_when_writable(writer: FifoWriter) -> None:
    """Flush output that did not fit in the FIFO as soon as logmon has read some."""
    wake = _Wakeup()
    writer.on_pending = wake.set
    writer.before_close = trio.lowlevel.notify_closing
    while True:
        while writer.pending and (fd := writer.fileno()) is not None:
            await trio.lowlevel.wait_writable(fd)
            writer.flush()
        await wake.wait()
