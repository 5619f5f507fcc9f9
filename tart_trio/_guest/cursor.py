"""Guest log lines into the task's stdout FIFO, resumable without gap, repeating at most one write.

macOS ``log`` prints syslog-style lines that start with a timestamp. The pump remembers
the last delivered line as (timestamp, how many lines carried that timestamp) in a small
file next to the VM's other runtime files. After a plugin restart it asks the guest for
``log show --start <that second>`` and skips everything up to the cursor, then continues
with ``log stream``, skipping lines already delivered.

Lines go to the sink in pieces it writes whole (``fifo.pieces``), each followed by the
cursor after it, so the saved cursor is what logmon has (see ``sink``). The cursor is a
position: after the last delivered line with a timestamp come the lines without one
(continuations of a message) it counts, and a line longer than a piece is delivered in
parts, whose bytes it counts too (with their CRC-32, so that a resume delivers only the
rest of that line, and only if it is the same line).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final
from zlib import crc32

import msgspec

from tart_trio._host import fifo
from tart_trio._host.safefs import open_own_file

_TIMESTAMP: Final = re.compile(rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d{4})?)\s")
_SHOW_FOOTER: Final = (b"-----", b"Log      -", b"Activity -")
_LINE_LIMIT: Final = 1 << 20


class Cursor(msgspec.Struct, frozen=True):
    """The last delivered line with a timestamp: the timestamp and the line's rank among
    lines with that timestamp. Then ``after`` lines without a timestamp were delivered,
    and ``partial`` bytes of the line after those (``partial_crc``: their CRC-32)."""

    timestamp: str
    count: int
    after: int = 0
    partial: int = 0
    partial_crc: int = 0


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

    ``on_cursor`` gets the cursor after each piece written; by default it is saved at once
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
        #: Lines without a timestamp still to skip after the resume cursor's own line
        #: (None: that line has not come yet).
        self._left: int | None = None
        self._held = b""  # the unfinished line at the end of what came so far
        # Where delivery stands: the last line with a timestamp, the lines after it, and
        # the bytes written of the next line (the open line) with its timestamp, if any.
        self._ts = b""
        self._rank = 0
        self._after = 0
        self._open = 0
        self._open_crc = 0
        self._open_ts = b""
        self._emitting = not skipping_untimed

    @property
    def cursor(self) -> Cursor | None:
        """Where delivery stands now."""
        if self._resume is not None:
            return self._resume
        if not self._ts:
            return None
        return Cursor(self._ts.decode(), self._rank, self._after, self._open, self._open_crc)

    def feed(self, chunk: bytes) -> None:
        """Handle a chunk of output: deliver new complete lines, remember the cursor."""
        data = self._held + chunk
        if self._resume is None and self._emitting:
            self._feed_live(data)
            return
        lines = data.split(b"\n")
        self._held = lines.pop()
        if len(self._held) > _LINE_LIMIT:
            lines.append(self._held)
            self._held = b""
        for index, line in enumerate(lines):
            before = self._ts, self._rank, self._after
            start = self._keep(line)
            if start is None:
                continue
            # From the first line kept on, every line is (the replay's footer aside).
            self._ts, self._rank, self._after = before  # _deliver counts the line again
            if start:  # the rest of the line a restart cut short
                match = _TIMESTAMP.match(line)
                self._open, self._open_crc = start, crc32(line[:start])
                self._open_ts = match.group(1) if match is not None else b""
            rest = [line[start:]]
            rest += (kept for kept in lines[index + 1 :] if not kept.startswith(_SHOW_FOOTER))
            self._deliver(b"\n".join(rest) + b"\n")
            return

    def _feed_live(self, data: bytes) -> None:
        """Nothing to skip: deliver every complete line at once (the common, hot path)."""
        cut = data.rfind(b"\n") + 1
        if not cut:
            if len(data) > _LINE_LIMIT:
                self._held = b""
                self._deliver(data + b"\n")
            else:
                self._held = data
            return
        self._held = data[cut:]
        self._deliver(data[:cut])

    def _deliver(self, block: bytes) -> None:
        """Write ``block`` (lines with their line breaks; the first may be the rest of the
        open line) in pieces the sink writes whole, each followed by the cursor after it."""
        for start, end in fifo.pieces(block):
            self._write(block[start:end])
            self._advance(block, start, end)
            current = self.cursor
            if current is not None:
                self.on_cursor(current)

    def _advance(self, block: bytes, start: int, end: int) -> None:
        """Move the cursor past ``block[start:end]``."""
        if self._open:
            eol = block.find(b"\n", start, end)
            if eol < 0:
                self._open += end - start
                self._open_crc = crc32(block[start:end], self._open_crc)
                return
            if self._open_ts:
                self._next(self._open_ts)
            else:
                self._after += 1
            self._open, self._open_crc, self._open_ts = 0, 0, b""
            start = eol + 1
        eol = block.rfind(b"\n", start, end)
        complete = eol + 1 if eol >= 0 else start
        if complete > start:
            self._count(block, start, complete)
        if complete < end:  # a line longer than a piece begins
            match = _TIMESTAMP.match(block, complete, end)
            self._open, self._open_crc = end - complete, crc32(block[complete:end])
            self._open_ts = match.group(1) if match is not None else b""

    def _count(self, block: bytes, start: int, stop: int) -> None:
        """Take the complete lines ``block[start:stop]`` into the cursor, looking at them
        from the last one back to where the timestamp changes."""
        last_ts, rank, after, end = b"", 0, 0, stop - 1  # end: the looked-at line's break
        while True:
            found = block.rfind(b"\n", start, end)
            begin = found + 1 if found >= 0 else start
            match = _TIMESTAMP.match(block, begin, end + 1)
            if match is None:
                if not last_ts:
                    after += 1
            elif not last_ts:
                last_ts, rank = match.group(1), 1
            elif match.group(1) == last_ts:
                rank += 1
            else:
                break
            if found < 0:  # every line looked at
                if last_ts and last_ts == self._ts:
                    rank += self._rank
                break
            end = found
        if last_ts:
            self._ts, self._rank, self._after = last_ts, rank, after
        else:
            self._after += after

    def _next(self, ts: bytes) -> None:
        """A line stamped ``ts`` was delivered (or skipped)."""
        self._rank = self._rank + 1 if ts == self._ts else 1
        self._ts = ts
        self._after = 0

    def save_cursor(self, cursor: Cursor) -> None:
        """Write ``cursor`` to the cursor file now."""
        self._file.save(cursor)

    def close(self) -> None:
        """Release the cursor file."""
        self._file.close()

    def end_of_replay(self) -> None:
        """The replayed part is over: the live stream follows and repeats its tail."""
        self._held = b""
        self._emitting = False
        self._resume = self.cursor
        self._left = None
        self._ts, self._rank, self._after = b"", 0, 0

    def _keep(self, line: bytes) -> int | None:
        """Where the part of ``line`` still due begins (None: nothing of it is)."""
        match = _TIMESTAMP.match(line)
        resume = self._resume
        if match is None:
            if line.startswith(_SHOW_FOOTER):
                return None
            if resume is None or self._left is None:
                if self._emitting:
                    return 0
                self._after += 1
                return None
            if self._left:  # delivered after the cursor's line
                self._left -= 1
                self._after += 1
                return None
            return self._resume_at(line)
        ts = match.group(1)
        self._next(ts)
        if resume is None:
            self._emitting = True
            return 0
        if self._left is None:
            stamp = resume.timestamp.encode()
            if ts < stamp or (ts == stamp and self._rank <= resume.count):
                if ts == stamp and self._rank == resume.count:
                    self._left = resume.after  # the cursor's own line
                self._emitting = False
                return None
            return self._resume_at(b"")  # past the cursor, whose line never came: all due
        if self._left:  # lines without a timestamp were due first: not the same log
            return self._resume_at(b"")
        return self._resume_at(line)

    def _resume_at(self, line: bytes) -> int:
        """The line after the cursor's position: due from the byte the cursor names (if
        it is the line whose start was delivered), and everything after it."""
        resume = self._resume
        assert resume is not None
        start = 0
        part = resume.partial
        if part and part <= len(line) and crc32(line[:part]) == resume.partial_crc:
            start = part
        self._resume = None
        self._left = None
        self._emitting = True
        return start


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
