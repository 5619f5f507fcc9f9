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

from tart_trio._fifo import FifoWriter
from tart_trio._groups import single_errors
from tart_trio._guest import ssh
from tart_trio._guest.cursor import HeldOutput, LinePump, cursor_path, load_cursor, resume_command
from tart_trio._state import DriverState

log = logging.getLogger("logs")
RETRY_MIN: Final = 0.5
RETRY_MAX: Final = 10.0
#: Exit codes of a shell that could not run the command at all (126: not executable,
#: 127: not found): running it again cannot help.
NOT_RUNNABLE: Final = (126, 127)
REPLAY_LIMIT: Final = 64 << 20
REPLAY_HOLD_LIMIT: Final = 16 << 20


async def pump_logs(
    state: DriverState,
    command: Sequence[str],
    emit: Callable[[str, dict[str, str]], None],
) -> None:
    """Stream the guest's logs until cancelled (when the VM ends)."""
    writer = FifoWriter(state.stdout_path)
    address = ssh.GuestAddress(
        host=state.ip,
        user=state.task_config.ssh_user,
        password=state.task_config.ssh_password,
        host_key=state.host_key,
    )
    cursor_file = cursor_path(state.runtime_dir)
    delay = RETRY_MIN
    reported: int | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush_when_writable, writer)
            while True:
                began = trio.current_time()
                status: int | None = None
                try:
                    async with ssh.open_guest(address) as guest:
                        status = await _stream(guest, command, writer, cursor_file)
                except ssh.HostKeyMismatch as exc:
                    emit(f"Log streaming stopped: {exc}", {"vm": state.vm_name})
                    nursery.cancel_scope.cancel()
                    return
                except ssh.GuestError as exc:
                    log.debug(
                        "log stream unavailable", extra={"vm": state.vm_name, "error": str(exc)}
                    )
                if status in NOT_RUNNABLE:
                    emit(
                        f"Log streaming stopped: log_command {command[0]!r} cannot run in the "
                        f"guest (exit code {status}). Set log_command in the task's config, "
                        'e.g. ["journalctl", "--follow"] for Linux guests',
                        {"vm": state.vm_name, "exit_code": str(status)},
                    )
                    nursery.cancel_scope.cancel()
                    return
                if status is not None and status != reported:
                    reported = status
                    emit(
                        f"log_command {command[0]!r} exited with code {status} in the guest; "
                        "running it again",
                        {"vm": state.vm_name, "exit_code": str(status)},
                    )
                if trio.current_time() - began >= RETRY_MAX:
                    delay = RETRY_MIN  # it ran a while: come back quickly after a reboot
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
    finally:
        writer.close()


async def _stream(
    guest: ssh.Guest, command: Sequence[str], writer: FifoWriter, cursor_file: Path
) -> int:
    """Stream until ``command`` ends; its exit status."""
    cursor = load_cursor(cursor_file)
    replay = resume_command(command, cursor) if cursor is not None else None
    pump = LinePump(writer.write, cursor_file, skipping_untimed=replay is not None)
    try:
        if replay is None:
            return await guest.stream(command, pump.feed)
        live = HeldOutput(pump.feed, REPLAY_HOLD_LIMIT)
        running = trio.Event()
        ended: list[int] = []

        async def stream_live() -> None:
            ended.append(await guest.stream(command, live.feed, running.set))

        with single_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_live)
                await running.wait()  # the live stream runs before the replay is taken
                replayed = await guest.run(replay, max_output=REPLAY_LIMIT)
                pump.feed(replayed.stdout)
                pump.end_of_replay()
                live.release()
        return ended[0]
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
