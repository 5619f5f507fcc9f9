"""Writing to Nomad's log FIFOs without ever blocking (standard library only).

logmon reads the FIFOs. When it is momentarily slower than the output, what does not fit
in the pipe waits in a buffer and is flushed as soon as the FIFO is writable again. The
supervisor (``tart run`` output to stderr) bounds that buffer and drops beyond it; the
plugin's guest output (``_guest.sink``) keeps everything and instead stops reading the
SSH channel, so that the guest's writer waits. Bytes are counted: ``accepted`` were given
to ``write``, ``done`` have reached the FIFO or were dropped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

BUFFER_LIMIT = 8 << 20


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

    def fileno(self) -> int | None:
        """The open FIFO, if any (to wait until it is writable)."""
        return self._fd

    def write(self, data: bytes) -> None:
        """Write what the reader can take now; keep the rest (up to the limit)."""
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
        self._pending += data
        self.flush()

    def drop_pending(self) -> int:
        """Give up on what waits for the reader; how many bytes that was."""
        count = len(self._pending)
        self._pending.clear()
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
                written = os.write(self._fd, self._pending)
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
            self._advance(written)

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
