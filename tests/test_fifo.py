"""Log FIFOs: a slow logmon pauses the producers, and only a stuck or absent one loses output."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from pathlib import Path

import trio
import trio.testing

from tart_trio._guest.sink import STALL_SECONDS, Checkpoints, Sink
from tart_trio._host.fifo import ATOMIC_WRITE, FifoWriter, pieces


async def read_all(reader: int, into: bytearray, size: int) -> None:
    while len(into) < size:
        await trio.lowlevel.wait_readable(reader)
        into += os.read(reader, 65536)


async def test_a_slow_reader_pauses_the_producer_and_loses_nothing(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    saved: list[int] = []
    sink = Sink(str(fifo), "stdout", lambda message: None, high_water=1 << 20, low_water=1 << 18)
    checkpoints = Checkpoints[int](sink, saved.append)
    payload = os.urandom(4 << 20)  # far more than a pipe and the high-water mark hold
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        for at in range(0, len(payload), 65536):
            sink.feed(payload[at : at + 65536])
            checkpoints.mark(at + 65536)  # what a producer's cursor says after this chunk
            saved_then = list(saved)
            if not sink.gate.is_open:
                break  # the producer stops reading its SSH channel here
        assert not sink.gate.is_open, "past the high-water mark the producer waits"
        assert sink.writer.pending <= (1 << 20) + 65536 and sink.writer.dropped == 0
        assert saved_then[-1] <= sink.done, "a cursor is saved only once its bytes left"
        fed = at + 65536
        with trio.fail_after(10):
            await read_all(reader, received, fed)
            await sink.drained()
        assert sink.gate.is_open, "below the low-water mark the producer goes on"
        nursery.cancel_scope.cancel()
    assert bytes(received) == payload[:fed]
    assert saved[-1] == fed and sink.writer.dropped == 0
    sink.close()
    os.close(reader)


async def test_a_stuck_or_absent_collector_drops_output_only_after_the_stall_limit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reports: list[str] = []
    sink = Sink(str(fifo), "stderr", reports.append)  # the real limit, on a virtual clock
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        began = trio.current_time()
        sink.feed(b"while nobody reads\n")
        await trio.sleep(STALL_SECONDS - 1)
        assert sink.writer.pending and not reports, "held, not dropped, within the limit"
        with trio.fail_after(5):
            while not reports:
                await trio.sleep(0.05)
        assert trio.current_time() - began >= STALL_SECONDS
        assert "took no stderr output for 60s (there is no reader on the FIFO)" in reports[0]
        assert sink.writer.dropped == len(b"while nobody reads\n") and sink.gate.is_open
        sink.feed(b"dropped too\n")
        assert sink.writer.pending == 0, "while stalled, output is dropped at once"
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        sink.feed(b"read again\n")
        received = bytearray()
        with trio.fail_after(5):
            await read_all(reader, received, len(b"read again\n"))
        assert bytes(received) == b"read again\n"
        assert "takes stderr output again; 31 bytes were dropped" in reports[-1]
        nursery.cancel_scope.cancel()
    sink.close()
    os.close(reader)


def test_the_supervisor_writer_drops_beyond_its_buffer_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    writer = FifoWriter(str(fifo))
    writer.write(b"nobody reads yet\n")  # no reader: dropped at once, never blocks
    assert writer.dropped == len(b"nobody reads yet\n")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = FifoWriter(str(fifo), buffer_limit=1 << 20)
    writer.write(b"x" * (4 << 20))
    assert writer.dropped > 0 and writer.pending <= 1 << 20
    assert writer.done + writer.pending == writer.accepted
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


def test_pieces_fit_one_atomic_write_and_end_after_a_line_break_when_they_can() -> None:
    short = b"".join(b"line %d\n" % n for n in range(2000))
    cuts = list(pieces(short))
    assert cuts[0][0] == 0 and cuts[-1][1] == len(short)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))
    assert all(0 < end - start <= ATOMIC_WRITE for start, end in cuts)
    assert all(short[end - 1 : end] == b"\n" for _, end in cuts)
    long = b"x" * (ATOMIC_WRITE * 2 + 5) + b"\nend"
    assert list(pieces(long)) == [
        (0, ATOMIC_WRITE),
        (ATOMIC_WRITE, 2 * ATOMIC_WRITE),
        (2 * ATOMIC_WRITE, len(long)),
    ], "only a line longer than a piece is cut inside; the last piece is what is left"
    assert list(pieces(b"")) == []


def test_the_fifo_takes_whole_units_only_so_done_never_stops_inside_one(tmp_path: Path) -> None:
    """A write of at most ATOMIC_WRITE bytes to a pipe is all or nothing: ``done`` (what
    logmon has) is always where a unit ends, even when the FIFO is full."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = FifoWriter(str(fifo), None, keep_when_absent=True)
    rng = random.Random(4711)
    sent, ends = bytearray(), {0}
    while len(sent) < 1 << 20:  # far more than the pipe holds
        unit = rng.randbytes(rng.randint(1, ATOMIC_WRITE))
        writer.write(unit)
        sent += unit
        ends.add(len(sent))
        assert writer.done in ends
    assert writer.pending, "the FIFO is full"
    received = bytearray()
    while writer.pending:
        with contextlib.suppress(BlockingIOError):
            received += os.read(reader, rng.randint(1, 3 * ATOMIC_WRITE))
        writer.flush()
        assert writer.done in ends
    while len(received) < len(sent):
        received += os.read(reader, 1 << 16)
    assert received == sent and writer.dropped == 0
    writer.close()
    os.close(reader)


async def test_a_cursor_saved_while_logmon_does_not_read_is_exactly_what_it_has(
    tmp_path: Path,
) -> None:
    """The plugin waits with a full FIFO (the common moment of a kill): the cursor saved
    last names exactly the bytes that reached the FIFO, so a restart repeats none."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    saved: list[int] = []
    sink = Sink(str(fifo), "stdout", lambda message: None)
    checkpoints = Checkpoints[int](sink, saved.append)
    output = b"".join(b"n=%d\n" % n for n in range(1, 60001))
    fed = 0
    for at in range(0, len(output), 65536):  # chunks as they come off the SSH channel
        chunk = output[at : at + 65536]
        for start, end in pieces(chunk):
            sink.feed(chunk[start:end])
            checkpoints.mark(fed + end)
        fed += len(chunk)
    assert sink.writer.pending, "the FIFO is full"
    assert saved[-1] == sink.done, "the cursor is where logmon's bytes end"
    received = bytearray()
    while True:
        try:
            received += os.read(reader, 1 << 16)
        except BlockingIOError:
            break
    assert bytes(received) == output[: saved[-1]]
    assert received.endswith(b"\n"), "and the FIFO holds whole lines"
    sink.close()
    os.close(reader)
