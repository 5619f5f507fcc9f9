"""Writing to Nomad's log FIFOs without ever blocking (standard library only).

logmon reads the FIFOs. When it is momentarily slower than the output, what does not fit
in the pipe waits in a buffer and is flushed as soon as the FIFO is writable again. The
supervisor (``tart run`` output to stderr) bounds that buffer and drops beyond it; the
plugin's guest output (``_guest.sink``) keeps everything and instead stops reading the
SSH channel, so that the guest's writer waits. Bytes are counted: ``accepted`` were given
to ``write``, ``done`` have reached the FIFO or were dropped.

Each ``write`` is a unit, joined to the unit waiting before it while both fit in
``ATOMIC_WRITE`` bytes, and one write(2) carries one unit. POSIX makes a write(2) of at
most ``PIPE_BUF`` bytes to a pipe all or nothing (512 bytes on macOS, 4096 on Linux), so
``done`` stops only between units; only a unit longer than that is written in parts. A
writer that records, after each write(2), how far its output got
(``_guest.sink.Checkpoints``) never records the middle of a unit, and a process killed
at any moment has written either all of a unit or none of it.
"""

from __future__ import annotations

import os
import select
import stat
from collections import deque
from collections.abc import Callable, Iterator

BUFFER_LIMIT = 8 << 20
#: The most one write(2) to a pipe may carry and still be all or nothing (POSIX ``PIPE_BUF``).
ATOMIC_WRITE = select.PIPE_BUF


def pieces(data: bytes, size: int = ATOMIC_WRITE) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive pieces of ``data``, each at most ``size`` bytes.

    A piece that is not the last ends just after the last line break it can hold (only a
    line longer than ``size`` is cut elsewhere), so written one unit each, a line is cut
    only where it must be.
    """
    start, total = 0, len(data)
    while total - start > size:
        end = data.rfind(b"\n", start, start + size) + 1
        if end <= start:
            end = start + size
        yield start, end
        start = end
    if start < total:
        yield start, total


class FifoWriter:
    """Opens lazily, writes with O_NONBLOCK, buffers briefly, reopens after the reader left.

    ``buffer_limit`` (None: unbounded) caps what waits for the reader; beyond it output is
    dropped. Without a reader, output is dropped at once, unless ``keep_when_absent``:
    then it waits for a reader like any other pending output.
    """

    def __init__(
        self,
        path: str | None,
        buffer_limit: int | None = BUFFER_LIMIT,
        *,
        keep_when_absent: bool = False,
    ) -> None:
        self._path = path if path and path != os.devnull else None
        self._fd: int | None = None
        self._pending = bytearray()
        #: Sizes of the units in ``_pending``, oldest first.
        self._units: deque[int] = deque()
        self._limit = buffer_limit
        self._keep = keep_when_absent
        self.dropped = 0
        self.accepted = 0
        self.done = 0
        self.on_pending: Callable[[], None] | None = None
        self.on_progress: Callable[[], None] | None = None
        self.before_close: Callable[[int], None] | None = None

    @property
    def discarding(self) -> bool:
        """True when there is no FIFO at all: everything written is discarded at once."""
        return self._path is None

    @property
    def pending(self) -> int:
        """Bytes waiting for the reader."""
        return len(self._pending)

    @property
    def unit_start(self) -> int:
        """Where the last unit waiting begins (``accepted`` when none waits). Where earlier
        writes joined in it end, ``done`` does not stop: they go out with its end."""
        return self.accepted - (self._units[-1] if self._units else 0)

    def fileno(self) -> int | None:
        """The open FIFO, if any (to wait until it is writable)."""
        return self._fd

    def write(self, data: bytes) -> None:
        """Write what the reader can take now; keep the rest (up to the limit).

        ``data`` is a unit: at most ``ATOMIC_WRITE`` bytes reach the FIFO whole, at once
        (with the units it joined, or that join it while it waits).
        """
        if not data:
            return
        self.accepted += len(data)
        if self._path is None:
            self._advance(len(data), dropped=True)
            return
        if self._limit is not None:
            room = max(self._limit - len(self._pending), 0)
            if len(data) > room:
                self._advance(len(data) - room, dropped=True)
                data = data[:room]
        if data:
            self._pending += data
            units = self._units
            if units and units[-1] + len(data) <= ATOMIC_WRITE:
                units[-1] += len(data)
            else:
                units.append(len(data))
        self.flush()

    def drop_pending(self) -> int:
        """Give up on what waits for the reader; how many bytes that was."""
        count = len(self._pending)
        self._pending.clear()
        self._units.clear()
        self._advance(count, dropped=True)
        return count

    def _advance(self, count: int, *, dropped: bool = False) -> None:
        if count <= 0:
            return
        self.done += count
        if dropped:
            self.dropped += count
        if self.on_progress is not None:
            self.on_progress()

    def flush(self) -> None:
        """Write as much of the pending output as the FIFO takes without blocking."""
        if not self._pending or self._path is None:
            return
        if self._fd is None:
            self._fd = _open_fifo(self._path)
            if self._fd is None:  # no reader at all right now
                if not self._keep:
                    self.drop_pending()
                return
        while self._pending:
            try:
                written = os.write(self._fd, self._pending[: self._units[0]])
            except BlockingIOError:
                if self.on_pending is not None:
                    self.on_pending()
                return
            except OSError:  # the reader went away (EPIPE)
                self.close()
                if not self._keep:
                    self.drop_pending()
                return
            del self._pending[:written]
            self._take(written)
            self._advance(written)

    def _take(self, count: int) -> None:
        units = self._units
        while count:
            if units[0] <= count:
                count -= units.popleft()
            else:
                units[0] -= count  # a unit longer than ATOMIC_WRITE, in part
                count = 0

    def close(self) -> None:
        """Close the FIFO (the reader sees EOF once every writer closed)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if self.before_close is not None:
                self.before_close(fd)
            os.close(fd)


def _open_fifo(path: str) -> int | None:
    """The FIFO at ``path`` opened for writing; None without a reader or if it is no FIFO.

    Nomad's log directory may be writable by other users, and the writers run as root:
    a symlink or a regular file in the FIFO's place is never written to.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd
