"""Guest log lines into the task's stdout FIFO, resumable without gap or duplicate.

macOS ``log`` prints syslog-style lines that start with a timestamp. The pump remembers
the last delivered line as (timestamp, how many lines carried that timestamp) in a small
file next to the VM's other runtime files. After a plugin restart it asks the guest for
``log show --start <that second>`` and skips everything up to the cursor, then continues
with ``log stream``, skipping lines already delivered.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from tart_trio._host.safefs import open_own_file

_TIMESTAMP: Final = re.compile(rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d{4})?)\s")
_SHOW_FOOTER: Final = (b"-----", b"Log      -", b"Activity -")
_LINE_LIMIT: Final = 1 << 20


class Cursor(msgspec.Struct, frozen=True):
    """The last delivered line: its timestamp and its rank among lines with that timestamp."""

    timestamp: str
    count: int


def load_cursor(path: Path) -> Cursor | None:
    """The saved cursor, if any."""
    try:
        return msgspec.json.decode(path.read_bytes().strip(), type=Cursor)
    except (OSError, msgspec.DecodeError):
        return None


_RECORD: Final = 256  # one fixed-size record, rewritten in place with a single pwrite


class CursorFile:
    """A cursor file, kept open: each save is one small pwrite (no temp file, no rename).

    Used for the guest log cursor and the command's output offsets (any small Struct).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._unusable = False

    def save(self, cursor: msgspec.Struct) -> None:
        record = msgspec.json.encode(cursor)
        if len(record) >= _RECORD or self._unusable:
            return  # never happens for timestamps; keep the last good record
        if self._fd is None:
            try:
                self._fd = open_own_file(str(self._path), os.O_WRONLY | os.O_CREAT)
            except OSError:
                self._unusable = True  # gone, or planted by someone else: logs still flow
                return
        os.pwrite(self._fd, record.ljust(_RECORD), 0)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def resume_command(stream_command: Sequence[str], cursor: Cursor) -> list[str] | None:
    """The ``log show`` that replays what a ``log stream`` command missed (None: can't)."""
    if len(stream_command) < 2 or os.path.basename(stream_command[0]) != "log":
        return None
    if stream_command[1] != "stream":
        return None
    show = [stream_command[0], "show"]
    args = list(stream_command[2:])
    while args:
        arg = args.pop(0)
        if arg in ("--level", "--type", "--timeout") and args:
            value = args.pop(0)
            if arg == "--level" and value in ("info", "debug"):
                show += ["--info"] + (["--debug"] if value == "debug" else [])
        elif arg.startswith("--level="):
            value = arg.split("=", 1)[1]
            if value in ("info", "debug"):
                show += ["--info"] + (["--debug"] if value == "debug" else [])
        else:
            show.append(arg)
    return [*show, "--start", cursor.timestamp[:19]]


class LinePump:
    """Splits output into lines, skips what the cursor says was delivered, writes the rest.

    ``on_cursor`` gets the cursor after each delivery; by default it is saved at once
    (``save_cursor``). A caller whose writes may wait in a buffer replaces it with one that
    saves only once the lines before it really left (``sink.Checkpoints``).
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        cursor_file: Path,
        *,
        skipping_untimed: bool,
        resume: Cursor | None = None,
    ) -> None:
        self._write = write
        self._file = CursorFile(cursor_file)
        self.on_cursor: Callable[[Cursor], None] = self._file.save
        self._resume = resume if resume is not None else load_cursor(cursor_file)
        self._partial = b""
        self._ts = b""
        self._rank = 0
        self._emitting = not skipping_untimed
        self._dirty = False

    @property
    def cursor(self) -> Cursor | None:
        """Where delivery stands now."""
        if self._ts:
            return Cursor(self._ts.decode(), self._rank)
        return self._resume

    def feed(self, chunk: bytes) -> None:
        """Handle a chunk of output: deliver new complete lines, remember the cursor."""
        data = self._partial + chunk
        if self._resume is None and self._emitting:
            self._feed_live(data)
            return
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _LINE_LIMIT:
            lines.append(self._partial)
            self._partial = b""
        out = [line + b"\n" for line in lines if self._keep(line)]
        if out:
            self._write(b"".join(out))
        if self._dirty:
            self._dirty = False
            current = self.cursor
            if current is not None:
                self.on_cursor(current)

    def _feed_live(self, data: bytes) -> None:
        """Nothing to skip: deliver every complete line at once, then update the cursor
        from the trailing lines only (the common, hot path)."""
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial = data if len(data) <= _LINE_LIMIT else b""
            if len(data) > _LINE_LIMIT:
                self._write(data + b"\n")
            return
        complete, self._partial = data[: cut + 1], data[cut + 1 :]
        self._write(complete)
        last_ts, rank, end = b"", 0, len(complete) - 1
        while end > 0:
            start = complete.rfind(b"\n", 0, end) + 1
            match = _TIMESTAMP.match(complete, start)
            if match is not None:
                if not last_ts:
                    last_ts = match.group(1)
                elif match.group(1) != last_ts:
                    break
                rank += 1
            end = start - 1
        else:
            if last_ts and last_ts == self._ts:
                rank += self._rank
        if last_ts:
            self._ts, self._rank = last_ts, rank
            current = self.cursor
            if current is not None:
                self.on_cursor(current)

    def save_cursor(self, cursor: Cursor) -> None:
        """Write ``cursor`` to the cursor file now."""
        self._file.save(cursor)

    def close(self) -> None:
        """Release the cursor file."""
        self._file.close()

    def end_of_replay(self) -> None:
        """The replayed part is over: the live stream follows and repeats its tail."""
        self._partial = b""
        self._emitting = False
        self._resume = self.cursor
        self._ts = b""
        self._rank = 0

    def _keep(self, line: bytes) -> bool:
        match = _TIMESTAMP.match(line)
        if match is None:
            if line.startswith(_SHOW_FOOTER):
                return False
            return self._emitting
        ts = match.group(1)
        self._rank = self._rank + 1 if ts == self._ts else 1
        self._ts = ts
        resume = self._resume
        if resume is not None:
            stamp = resume.timestamp.encode()
            if ts < stamp or (ts == stamp and self._rank <= resume.count):
                self._emitting = False
                return False
            self._resume = None
        self._emitting = True
        self._dirty = True
        return True


def cursor_path(runtime_dir: str) -> Path:
    """Where a task's log cursor lives."""
    return Path(runtime_dir) / "log.cursor"


class HeldOutput:
    """Holds a live stream's output until ``release``, then passes it on.

    Past ``limit`` bytes it calls ``pause`` (the stream stops reading its channel, so the
    guest waits instead of output being lost); ``release`` delivers what was held and
    calls ``resume``. The timestamp of the first timestamped line it holds is
    ``first_timestamp``, announced by ``on_timestamp``: the stream reads the log by then.
    """

    def __init__(
        self,
        deliver: Callable[[bytes], None],
        limit: int,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
        on_timestamp: Callable[[], None] = lambda: None,
    ) -> None:
        self._deliver = deliver
        self._limit = limit
        self._pause = pause
        self._resume = resume
        self._on_timestamp = on_timestamp
        self._paused = False
        self._held: list[bytes] | None = []
        self._size = 0
        self._head: bytearray | None = bytearray()
        self.first_timestamp: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Hold or deliver a chunk."""
        if self._held is None:
            self._deliver(chunk)
            return
        if self._head is not None:
            self._look_for_timestamp(chunk)
        self._held.append(chunk)
        self._size += len(chunk)
        if self._size >= self._limit and not self._paused:
            self._paused = True
            self._pause()

    def _look_for_timestamp(self, chunk: bytes) -> None:
        head = self._head
        assert head is not None
        head += chunk
        cut = head.rfind(b"\n")
        if cut < 0:
            if len(head) > _LINE_LIMIT:
                head.clear()
            return
        for line in head[:cut].split(b"\n"):
            match = _TIMESTAMP.match(line)
            if match is not None:
                self._head = None
                self.first_timestamp = match.group(1).decode()
                self._on_timestamp()
                return
        del head[: cut + 1]

    def release(self) -> None:
        """Deliver what was held; deliver directly from now on."""
        held, self._held = self._held or [], None
        for chunk in held:
            self._deliver(chunk)
        if self._paused:
            self._paused = False
            self._resume()

    def abandon(self) -> None:
        """Forget what was held (the stream ended before its replay); resume if paused."""
        self._held = None
        if self._paused:
            self._paused = False
            self._resume()
