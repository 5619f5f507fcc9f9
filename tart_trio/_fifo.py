"""Writing to Nomad's log FIFOs without ever blocking (standard library only).

logmon reads the FIFOs. When it is momentarily slower than the output, what does not fit
in the pipe waits in a bounded buffer and is flushed as soon as the FIFO is writable
again; only beyond the buffer (logmon stuck or gone) is output dropped, never stalling
the plugin or the VM. Used by the plugin (guest logs to stdout) and by the supervisor
(``tart run`` output to stderr).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

BUFFER_LIMIT = 8 << 20


class FifoWriter:
    """Opens lazily, writes with O_NONBLOCK, buffers briefly, reopens after the reader left."""

    def __init__(self, path: str | None, buffer_limit: int = BUFFER_LIMIT) -> None:
        self._path = path if path and path != os.devnull else None
        self._fd: int | None = None
        self._pending = bytearray()
        self._limit = buffer_limit
        self.dropped = 0
        self.on_pending: Callable[[], None] | None = None
        self.before_close: Callable[[int], None] | None = None

    @property
    def pending(self) -> int:
        """Bytes waiting for the reader."""
        return len(self._pending)

    def fileno(self) -> int | None:
        """The open FIFO, if any (to wait until it is writable)."""
        return self._fd

    def write(self, data: bytes) -> None:
        """Write what the reader can take now; keep the rest (up to the limit)."""
        if self._path is None or not data:
            return
        room = self._limit - len(self._pending)
        if len(data) > room:
            self.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._pending += data
        self.flush()

    def flush(self) -> None:
        """Write as much of the pending output as the FIFO takes without blocking."""
        if not self._pending or self._path is None:
            return
        if self._fd is None:
            self._fd = _open_fifo(self._path)
            if self._fd is None:
                self.dropped += len(self._pending)  # no reader at all right now
                self._pending.clear()
                return
        while self._pending:
            try:
                written = os.write(self._fd, self._pending)
            except BlockingIOError:
                if self.on_pending is not None:
                    self.on_pending()
                return
            except OSError:
                self.dropped += len(self._pending)
                self._pending.clear()
                self.close()
                return
            del self._pending[:written]

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
