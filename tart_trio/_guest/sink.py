"""Guest output into one of the task's log FIFOs: backpressure instead of loss.

A Sink owns the writer of one FIFO (stdout or stderr) for the VM's life. Its producers
(the guest log stream, the command's stdout or stderr) read SSH channels and feed it.
Past ``HIGH_WATER`` bytes waiting for Nomad's logmon the Sink closes its gate: the
producers stop reading their channels, asyncssh stops granting the guest flow-control
window, and the writer in the guest waits. Below ``LOW_WATER`` the gate opens again.

Output is dropped only when logmon takes nothing for ``STALL_SECONDS``: stuck with a full
FIFO, or gone (no reader). Then what waits is dropped, and so is new output until logmon
reads again; a task event says so when that starts and when it ends.

Delivery is counted in bytes (``FifoWriter.accepted`` and ``done``). A producer keeps its
resume cursor with ``Checkpoints``: a cursor is saved only once every byte fed before it
reached the FIFO, so a plugin killed with output still in memory resumes from what logmon
actually got.

Producers feed pieces of at most ``ATOMIC_WRITE`` bytes (``fifo.pieces``: cut after line
breaks) and mark their cursor after each. The writer sends whole pieces, several in one
write(2) of at most ``ATOMIC_WRITE`` bytes, which the kernel takes whole or not at all,
and the cursor is saved right after it: the saved cursor is exactly what logmon has,
whenever the plugin is killed, except in the instant between a write(2) and that save.
A kill there repeats that one write after the restart (at most ``ATOMIC_WRITE`` bytes,
ending after a line break unless a line is longer or the output fed ended inside one): a
process that can die between two system calls cannot both write and record atomically,
and logmon, which has the bytes, tells no one how many.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

import trio

from tart_trio._guest.ssh import Gate
from tart_trio._host.fifo import FifoWriter

HIGH_WATER: Final = 1 << 20
LOW_WATER: Final = 256 << 10
STALL_SECONDS: Final = 60.0
ABSENT_POLL: Final = 0.25

T = TypeVar("T")


class _Wakeup:
    """A re-arming event: ``set`` wakes the current waiters once."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        event = self._event
        await event.wait()
        if self._event is event:
            self._event = trio.Event()


class Sink:
    """One log FIFO of a task, fed by guest output, flushed by :meth:`run`."""

    def __init__(
        self,
        path: str | None,
        name: str,
        report: Callable[[str], None],
        *,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        self.name = name
        self.gate = Gate()
        self.writer = FifoWriter(path, None, keep_when_absent=True)
        self._report = report
        self._high = high_water
        self._low = low_water
        self._stall_seconds = stall_seconds
        self._holds = 0
        self._listeners: list[Callable[[int], None]] = []
        self._pending_wake = _Wakeup()
        self._progress_wake = _Wakeup()
        self._written = 0
        self._since = trio.current_time()
        self._stalled = False
        self._stall_dropped = 0
        self.writer.on_pending = self._pending_wake.set
        self.writer.on_progress = self._progressed
        self.writer.before_close = trio.lowlevel.notify_closing

    @property
    def accepted(self) -> int:
        """Bytes fed so far."""
        return self.writer.accepted

    @property
    def done(self) -> int:
        """Bytes that reached the FIFO or were dropped."""
        return self.writer.done

    def listen(self, on_done: Callable[[int], None]) -> None:
        """Call ``on_done(done)`` whenever more bytes are done."""
        self._listeners.append(on_done)

    def unlisten(self, on_done: Callable[[int], None]) -> None:
        """Stop calling ``on_done``."""
        self._listeners.remove(on_done)

    def feed(self, data: bytes) -> None:
        """Take a chunk of output (never blocks; producers wait at the gate instead).

        The chunk is one unit of the writer: at most ``ATOMIC_WRITE`` bytes reach the
        FIFO whole, at once (``fifo.pieces`` cuts output so).
        """
        if not self.writer.pending:
            self._since = trio.current_time()
        self.writer.write(data)
        if self._stalled and self.writer.pending:
            self._stall_dropped += self.writer.drop_pending()
        if self.writer.pending:
            self._pending_wake.set()
        self._update_gate()

    def hold(self) -> None:
        """Close the gate until :meth:`unhold` (a producer needs its output held back)."""
        self._holds += 1
        self._update_gate()

    def unhold(self) -> None:
        """Undo one :meth:`hold`."""
        self._holds -= 1
        self._update_gate()

    def _update_gate(self) -> None:
        pending = self.writer.pending
        if self._holds or (not self._stalled and pending >= self._high):
            self.gate.close()
        elif self._stalled or pending <= self._low:
            self.gate.open()

    def _progressed(self) -> None:
        written = self.writer.done - self.writer.dropped
        if written != self._written:
            self._written = written
            self._since = trio.current_time()
            if self._stalled:
                self._stalled = False
                self._report(
                    f"Nomad's log collector takes {self.name} output again; "
                    f"{self._stall_dropped} bytes were dropped while it did not"
                )
        self._progress_wake.set()
        for listener in self._listeners:
            listener(self.writer.done)

    def _check_stall(self, gone: bool) -> None:
        if self._stalled or not self.writer.pending:
            return
        if trio.current_time() - self._since < self._stall_seconds:
            return
        self._stalled = True
        self._stall_dropped = self.writer.drop_pending()
        why = "there is no reader on the FIFO" if gone else "the FIFO stayed full"
        self._report(
            f"Nomad's log collector took no {self.name} output for "
            f"{self._stall_seconds:.0f}s ({why}): {self._stall_dropped} bytes dropped, and "
            "output is dropped until it reads again"
        )
        self._update_gate()

    async def run(self) -> None:
        """Flush waiting output whenever logmon can take it; enforce the stall limit."""
        while True:
            if not self.writer.pending:
                await self._pending_wake.wait()
                continue
            fd = self.writer.fileno()
            if fd is None:
                self.writer.flush()  # (re)open the FIFO if logmon is there
                if self.writer.fileno() is None:
                    await trio.sleep(ABSENT_POLL)
                    self._check_stall(gone=True)
                continue
            left = self._stall_seconds - (trio.current_time() - self._since)
            with trio.move_on_after(max(left, 0.0)):
                try:
                    await trio.lowlevel.wait_writable(fd)
                except trio.ClosedResourceError:
                    continue
            self.writer.flush()
            self._check_stall(gone=False)
            self._update_gate()

    async def drained(self) -> None:
        """Return once nothing waits for logmon (delivered, or dropped after a stall)."""
        while self.writer.pending:
            await self._progress_wake.wait()

    def close(self) -> None:
        """Close the FIFO; later output is held until a new run (or dropped by no one)."""
        self.writer.close()


class Checkpoints(Generic[T]):
    """Resume cursors of one producer, saved once the output before them is done."""

    def __init__(self, sink: Sink, save: Callable[[T], None]) -> None:
        self._sink = sink
        self._save = save
        self._queue: deque[tuple[int, T]] = deque()
        sink.listen(self._done)

    def close(self) -> None:
        """Stop following the sink (what is still queued is not saved)."""
        self._sink.unlisten(self._done)

    def mark(self, value: T) -> None:
        """``value`` describes everything fed to the sink so far."""
        position = self._sink.accepted
        if self._sink.done >= position:
            self._queue.clear()
            self._save(value)
        elif self._queue and self._queue[-1][0] > self._sink.writer.unit_start:
            # the last mark is inside the unit still waiting, which is written whole:
            # the two would be saved at the same moment, so the newer one replaces it
            self._queue[-1] = (position, value)
        else:
            self._queue.append((position, value))

    def _done(self, done: int) -> None:
        latest: tuple[int, T] | None = None
        while self._queue and self._queue[0][0] <= done:
            latest = self._queue.popleft()
        if latest is not None:
            self._save(latest[1])
