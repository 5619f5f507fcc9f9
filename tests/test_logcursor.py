"""Resuming the guest log: what is delivered once, and only once."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tart_trio._guest.cursor import Cursor, HeldOutput, LinePump, load_cursor, resume_command
from tart_trio._host.fifo import ATOMIC_WRITE


def line(second: int, micro: int, seq: int) -> bytes:
    return (
        f"2026-11-27 07:35:{second:02d}.{micro:06d}+0000  localhost kernel[0]: seq={seq}\n".encode()
    )


def test_lines_split_across_chunks_are_delivered_whole(tmp_path: Path) -> None:
    out: list[bytes] = []
    pump = LinePump(out.append, tmp_path / "cursor", skipping_untimed=False)
    data = line(1, 1, 1) + line(1, 2, 2)
    pump.feed(data[:10])
    pump.feed(data[10:50])
    pump.feed(data[50:])
    assert b"".join(out) == data
    assert load_cursor(tmp_path / "cursor") == Cursor("2026-11-27 07:35:01.000002+0000", 1)


def test_replay_skips_what_was_delivered_and_the_live_stream_repeats_nothing(
    tmp_path: Path,
) -> None:
    cursor_file = tmp_path / "cursor"
    first: list[bytes] = []
    pump = LinePump(first.append, cursor_file, skipping_untimed=False)
    pump.feed(line(1, 5, 1) + line(1, 5, 2) + line(2, 0, 3))
    # A new process resumes: log show replays from the cursor's second, with its header.
    out: list[bytes] = []
    resumed = LinePump(out.append, cursor_file, skipping_untimed=True)
    live = HeldOutput(resumed.feed, 1 << 20)
    live.feed(line(2, 900, 5) + line(3, 0, 6))  # the stream started during the replay
    resumed.feed(
        b"Timestamp                       (process)[PID]\n"
        + line(2, 0, 3)
        + line(2, 500, 4)
        + line(2, 900, 5)
        + b"-" * 20
        + b"\nLog      - Default: 3\n"
    )
    resumed.end_of_replay()
    live.release()
    live.feed(line(3, 100, 7))
    assert b"".join(out) == line(2, 500, 4) + line(2, 900, 5) + line(3, 0, 6) + line(3, 100, 7)


def test_equal_timestamps_are_told_apart_by_rank(tmp_path: Path) -> None:
    cursor_file = tmp_path / "cursor"
    LinePump(lambda _: None, cursor_file, skipping_untimed=False).feed(line(1, 0, 1))
    out: list[bytes] = []
    LinePump(out.append, cursor_file, skipping_untimed=True).feed(
        line(1, 0, 1) + line(1, 0, 2) + line(1, 1, 3)
    )
    assert b"".join(out) == line(1, 0, 2) + line(1, 1, 3)


def test_resume_command_turns_stream_into_show() -> None:
    cursor = Cursor("2026-11-27 07:35:01.123456+0000", 1)
    default = ("/usr/bin/log", "stream", "--style", "syslog", "--level", "info")
    assert resume_command(default, cursor) == [
        "/usr/bin/log",
        "show",
        "--style",
        "syslog",
        "--info",
        "--start",
        "2026-11-27 07:35:01",
    ]
    assert resume_command(("/bin/cat", "/var/log/app.log"), cursor) is None


def test_rank_carries_across_chunks_on_the_live_path(tmp_path: Path) -> None:
    cursor_file = tmp_path / "cursor"
    live = LinePump(lambda _: None, cursor_file, skipping_untimed=False)
    live.feed(line(1, 0, 1) + line(1, 0, 2))
    live.feed(b"an untimed continuation line\n" + line(1, 0, 3))
    assert load_cursor(cursor_file) == Cursor("2026-11-27 07:35:01.000000+0000", 3)
    out: list[bytes] = []
    LinePump(out.append, cursor_file, skipping_untimed=True).feed(
        line(1, 0, 1)
        + line(1, 0, 2)
        + b"an untimed continuation line\n"
        + line(1, 0, 3)
        + line(1, 0, 4)
    )
    assert b"".join(out) == line(1, 0, 4)


def test_held_output_names_the_first_timestamped_line_even_split_across_chunks() -> None:
    announced: list[str | None] = []
    held = HeldOutput(
        lambda _: None, 1 << 20, on_timestamp=lambda: announced.append(held.first_timestamp)
    )
    data = b"Timestamp                       (process)[PID]\n" + line(2, 900, 5) + line(3, 0, 6)
    held.feed(data[:60])
    held.feed(data[60:70])
    assert announced == []
    held.feed(data[70:])
    assert announced == ["2026-11-27 07:35:02.000900+0000"]


HEADER = b"Timestamp                       (process)[PID]\n"
FOOTER = b"-" * 116 + b"\nLog      - Default:  3, Info: 0\nActivity - Create: 0\n"


@st.composite
def guest_log(draw: st.DrawFn) -> list[bytes]:
    """Lines as ``log show`` and ``log stream`` print them: timestamps that never go back
    (some repeated), continuation lines without one, and lines longer than a piece."""
    micro, lines = 0, []
    kinds = ["new", "same", "untimed", "empty", "long", "long untimed"]
    for seq, kind in enumerate(["new", *draw(st.lists(st.sampled_from(kinds), max_size=40))]):
        if kind in ("new", "long"):
            micro += 1
        if kind in ("new", "same", "long"):
            text = line(1 + micro // 1000, micro % 1000, seq)
            lines.append(
                text[:-1] + b" " + b"x" * (3 * ATOMIC_WRITE) + b"\n" if kind == "long" else text
            )
        elif kind == "untimed":
            lines.append(b"    continuation %d\n" % seq)
        elif kind == "empty":
            lines.append(b"\n")
        else:
            lines.append(b"y" * (ATOMIC_WRITE + draw(st.integers(1, 2 * ATOMIC_WRITE))) + b"\n")
    return lines


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(guest_log(), st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=30))
def test_a_resume_from_any_cursor_saved_delivers_exactly_what_had_not_gone_out(
    lines: list[bytes], cuts: list[int]
) -> None:
    """The cursor saved after each piece written, whatever the piece holds (many lines, the
    middle of a long one, continuations): a restart from it, replaying the log, delivers
    exactly the rest, with no line repeated, lost or cut."""
    text = b"".join(lines)
    with tempfile.TemporaryDirectory() as scratch:
        cursor_file = Path(scratch) / "cursor"
        written = bytearray()
        writes: list[int] = []
        saved: list[tuple[int, Cursor]] = []
        pump = LinePump(
            lambda piece: (written.extend(piece), writes.append(len(piece))),
            cursor_file,
            skipping_untimed=False,
        )
        pump.on_cursor = lambda cursor: saved.append((len(written), cursor))
        begin = 0
        for at in [*sorted({cut % (len(text) + 1) for cut in cuts}), len(text)]:
            pump.feed(text[begin:at])
            begin = at
        assert bytes(written) == text
        assert all(size <= ATOMIC_WRITE for size in writes), "each piece is written whole"
        assert len(saved) == len(writes), "a cursor after every piece"
        for at, cursor in saved:
            out = bytearray()
            resumed = LinePump(out.extend, cursor_file, skipping_untimed=True, resume=cursor)
            resumed.feed(HEADER + text + FOOTER)
            assert bytes(out) == text[at:], (at, cursor)


def test_a_resumed_line_that_is_not_the_one_cut_short_is_delivered_whole(tmp_path: Path) -> None:
    long = line(1, 0, 1)[:-1] + b" " + b"x" * (2 * ATOMIC_WRITE) + b"\n"
    saved: list[Cursor] = []
    pump = LinePump(lambda _: None, tmp_path / "cursor", skipping_untimed=False)
    pump.on_cursor = saved.append
    pump.feed(line(0, 0, 0) + long)
    cut = saved[1]
    assert (cut.timestamp, cut.count, cut.partial) == (
        "2026-11-27 07:35:00.000000+0000",
        1,
        ATOMIC_WRITE,
    )
    other = line(1, 0, 1)[:-1] + b" " + b"z" * (2 * ATOMIC_WRITE) + b"\n"  # not what went out
    out = bytearray()
    LinePump(out.extend, tmp_path / "cursor", skipping_untimed=True, resume=cut).feed(
        line(0, 0, 0) + other
    )
    assert bytes(out) == other, "repeated in part rather than cut"
