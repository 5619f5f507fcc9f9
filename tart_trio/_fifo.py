"""Writing to Nomad's log FIFOs without ever blocking (standard library only).

logmon reads the FIFOs; when it is slow or gone, output is dropped rather than stalling
the plugin or the VM. Used by the plugin (guest logs to stdout) and by the supervisor
(``tart run`` output to stderr).
"""

from __future__ import annotations

import os


class FifoWriter:
    """Opens lazily, writes with O_NONBLOCK, reopens after the reader went away."""

    def __init__(self, path: str | None) -> None:
        self._path = path if path and path != os.devnull else None
        self._fd: int | None = None
        self.dropped = 0

    def write(self, data: bytes) -> None:
        """Write what the reader can take now; count the rest as dropped."""
        if self._path is None or not data:
            return
        if self._fd is None:
            try:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                self.dropped += len(data)
                return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                self.dropped += len(view)
                return
            except OSError:
                self.close()
                self.dropped += len(view)
                return
            view = view[written:]

    def close(self) -> None:
        """Close the FIFO (the reader sees EOF once every writer closed)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
