"""What the plugin reads from a guest, driven with random and adversarial bytes.

The command's status file and the launch's reply are written in the guest, where a build
from a pull request runs: any bytes may come, in any chunks. Whatever comes, the readers
end with a defined outcome, keep at most a bounded amount of it, and give the same answer
however the bytes are cut into chunks.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tart_trio._guest.command import launch_reply
from tart_trio._guest.status import LINE_MAX, Settled, StatusReader
from tart_trio._task.golden import parse_check_reply

PROTOCOL = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Lines a hostile status file may hold: real ones, forged ones, broken ones.
LINES = st.one_of(
    st.sampled_from(
        [
            b"timeout",
            b"exit 0 10 20",
            b"exit 3 0 0",
            b"lost 5 6",
            b"missing",
            b"exit 0x1 5 5",
            b"exit 2147483648 0 0",
            b"exit -1 0 0",
            b"exit 1 2",
            b"lost",
            b"exit 1 99999999999999999999999 0",
            b"  exit 4 1 1\r",
            b"exit\t5\t1\t1",
            b"exit\x0b6 1 1",
            b"exit7 1 1",
            b"",
        ]
    ),
    st.binary(max_size=40),
    st.builds(
        lambda n, c: c * n, st.integers(LINE_MAX - 2, LINE_MAX + 2), st.sampled_from([b"x", b" "])
    ),
)
STREAMS = st.lists(LINES, max_size=30).map(b"\n".join) | st.binary(max_size=4096)


def read_all(chunks: list[bytes]) -> tuple[Settled | None, StatusReader]:
    reader = StatusReader()
    settled = None
    for chunk in chunks:
        settled = reader.feed(chunk)
        assert len(reader._partial) <= LINE_MAX, "a line without end is not kept whole"
    return settled, reader


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *marks], [*marks, len(data)], strict=True)]


@PROTOCOL
@given(STREAMS, st.lists(st.integers(min_value=0), max_size=12))
@example(b"timeout\nexit 9 1 2\nexit 0 0 0\n", [3, 9, 20])
@example(b"x" * (LINE_MAX + 1) + b"exit 0 0 0\nexit 5 0 0\n", [LINE_MAX, LINE_MAX + 3])
def test_the_outcome_does_not_depend_on_how_the_bytes_arrive(
    data: bytes, points: list[int]
) -> None:
    whole, _ = read_all([data])
    chunked, _ = read_all(cut(data, points))
    assert chunked == whole


@PROTOCOL
@given(STREAMS)
def test_every_stream_ends_in_a_defined_outcome_within_range(data: bytes) -> None:
    settled, reader = read_all([data, b"\n"])
    if settled is None:
        return
    outcome = settled.outcome
    assert outcome.how in ("exited", "lost", "missing", "malformed")
    assert 0 <= outcome.exit_code <= 255
    assert 0 <= settled.out_end < 2**63 and 0 <= settled.err_end < 2**63
    assert len(outcome.detail) <= 80
    if outcome.how != "exited":
        assert outcome.exit_code == 0
    # Settled is final: whatever comes later, forged or repeated, changes nothing.
    assert reader.feed(b"exit 0 0 0\nexit 1 1 1\nmissing\n") is settled


def test_the_first_decisive_line_wins_and_malformed_ones_are_named() -> None:
    settled, _ = read_all([b"timeout\n", b"exit 137 4 ", b"0\nexit 0 0 0\n"])
    assert settled is not None
    assert (settled.outcome.how, settled.outcome.exit_code, settled.outcome.timed_out) == (
        "exited",
        137,
        True,
    )
    assert (settled.out_end, settled.err_end) == (4, 0)
    for forged in (b"exit 0x1 5 5\n", b"exit 2147483648 0 0\n", b"lost 1 2 3\n"):
        settled, _ = read_all([forged])
        assert settled is not None and settled.outcome.how == "malformed"
        assert settled.outcome.detail == forged.decode().strip()


def test_a_flood_is_read_in_bounded_memory() -> None:
    """8 MiB of line breaks, then 16 MiB without one, then the real line."""
    reader = StatusReader()
    for _ in range(128):
        assert reader.feed(b"\n" * 65536) is None
    for _ in range(256):
        assert reader.feed(b"y" * 65536) is None
        assert len(reader._partial) <= LINE_MAX
    settled = reader.feed(b"\nexit 2 10 0\n")
    assert settled is not None and settled.outcome.exit_code == 2


@PROTOCOL
@given(st.lists(st.one_of(LINES, st.just(b"tart-command-started 4242")), max_size=10))
def test_the_launch_reply_is_found_past_any_greeting(lines: list[bytes]) -> None:
    output = b"\n".join([*lines, b""])
    reply = launch_reply(output)
    marked = [
        line
        for line in lines
        if line.split()[:1] in ([b"tart-command-started"], [b"tart-command-error"])
    ]
    if not marked:
        assert reply is None
    elif marked[0] == b"tart-command-started 4242":
        assert reply == 4242
    else:
        assert isinstance(reply, str) and len(reply) <= 500


def test_a_launch_reply_with_a_bad_pid_is_a_reason_not_a_pid() -> None:
    for line in (
        b"tart-command-started 0x10",
        b"tart-command-started 99999999999",
        b"tart-command-started",
    ):
        assert isinstance(launch_reply(b"hello\n" + line + b"\n"), str)
    assert launch_reply(b"Welcome\ntart-command-started 77\n") == 77
    assert launch_reply(b"tart-command-started 77") is None  # not a whole line yet


#: What a resumed warm clone may answer to the driver's check: real lines, forged ones,
#: and garbage (the guest runs the golden's image; the reply is read as untrusted).
CHECK_LINES = st.one_of(
    st.sampled_from(
        [
            b"home /Users/admin",
            b"nonce 0123456789abcdef0123456789abcdef",
            b"clock 1796650000",
            b"nonce 0123456789ABCDEF0123456789ABCDEF",
            b"nonce 0123456789abcdef",
            b"nonce 0123456789abcdef0123456789abcdef0",
            b"clock 99999999999999999999",
            b"clock -5",
            b"home relative/path",
            b"home /a\x00b",
            b"home /" + b"x" * 5000,
            b"",
        ]
    ),
    st.binary(max_size=200),
)


@PROTOCOL
@given(st.lists(CHECK_LINES, max_size=30))
def test_a_resumed_guests_check_reply_is_parsed_as_untrusted(lines: list[bytes]) -> None:
    home, nonce, clock = parse_check_reply(b"\n".join(lines))
    assert home == "" or (home.startswith("/") and len(home) <= 1001 and "\n" not in home)
    assert "\0" not in home
    assert nonce == "" or (len(nonce) == 32 and all(c in "0123456789abcdef" for c in nonce))
    assert clock is None or 0 <= clock < 10**12


@PROTOCOL
@given(st.lists(CHECK_LINES, max_size=10), st.lists(CHECK_LINES, max_size=10))
def test_junk_around_a_real_check_reply_does_not_hide_it(
    before: list[bytes], after: list[bytes]
) -> None:
    markers = (b"home ", b"nonce ", b"clock ")
    lines = [line for line in before if not any(marker in line for marker in markers)]
    real = [b"home /Users/admin", b"nonce " + b"ab" * 16, b"clock 1796650000"]
    reply = b"\n".join([*lines, *real, *after])
    home, nonce, clock = parse_check_reply(reply)
    assert (home, nonce, clock) == ("/Users/admin", "ab" * 16, 1796650000.0)
