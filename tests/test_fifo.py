"""FIFO writes never block, and a momentarily slow reader loses nothing."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from tart_trio._fifo import FifoWriter
from tart_trio._guest.logs import flush_when_writable


async def test_slow_reader_loses_nothing_and_absent_reader_costs_nothing(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    writer = FifoWriter(str(fifo))
    writer.write(b"nobody reads yet\n")  # no reader: dropped at once, never blocks
    assert writer.dropped == len(b"nobody reads yet\n")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    payload = os.urandom(1 << 20)  # far more than a pipe holds
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flush_when_writable, writer)
        writer.write(payload)
        assert writer.pending > 0, "the rest waits in the buffer"
        with trio.fail_after(10):
            while len(received) < len(payload):
                await trio.lowlevel.wait_readable(reader)
                received += os.read(reader, 65536)
        nursery.cancel_scope.cancel()
    assert bytes(received) == payload
    writer.close()
    os.close(reader)


def test_beyond_the_buffer_output_is_dropped_not_blocked(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = FifoWriter(str(fifo), buffer_limit=1 << 20)
    writer.write(b"x" * (4 << 20))
    assert writer.dropped > 0 and writer.pending <= 1 << 20
    writer.close()
    os.close(reader)


def test_a_file_or_symlink_in_the_fifos_place_is_never_written(tmp_path: Path) -> None:
    """The writers run as root; Nomad's log directory may be writable by other users."""
    target = tmp_path / "precious"
    target.write_bytes(b"keep me\n")
    (tmp_path / "planted.fifo").symlink_to(target)
    for path in (tmp_path / "planted.fifo", target):
        writer = FifoWriter(str(path))
        writer.write(b"log line\n")
        writer.close()
        assert writer.dropped == len(b"log line\n")
    assert target.read_bytes() == b"keep me\n"
