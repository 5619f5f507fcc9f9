"""Resuming the guest log: what is delivered once, and only once."""

from __future__ import annotations

from pathlib import Path

from tart_trio._guest.cursor import Cursor, HeldOutput, LinePump, load_cursor, resume_command


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
