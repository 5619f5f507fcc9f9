"""The command's status file, as read by the plugin: guest-written, so hostile.

The runner appends ``timeout`` when the time limit fired and ``exit CODE OUTSIZE ERRSIZE``
when the command ended; the waiter script adds ``lost OUTSIZE ERRSIZE`` when the runner is
gone without an exit line, or prints ``missing`` when the job never started. Anything in
the guest can append to the file too, so :class:`StatusReader` reads it as untrusted:

- memory is bounded: at most one unfinished line of ``LINE_MAX`` bytes is kept (a longer
  line is skipped up to its end), whatever arrives;
- CPU per byte is bounded: lines are found by one regular-expression scan per chunk, in C;
  the text between decisive lines costs no Python work per line;
- the first decisive line (``exit``, ``lost``, ``missing``) settles the outcome, and the
  reader stops there: later lines, forged or repeated, change nothing;
- a decisive line whose numbers are not plain decimals in range is a clear outcome of its
  own (``malformed``), never an exception in the plugin.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec

#: Longest status line kept; real ones are under 64 bytes.
LINE_MAX: Final = 1024
#: Exit codes are what a shell reports, 0 to 255; anything else did not come from the runner.
EXIT_CODE_MAX: Final = 255
#: Output sizes above this (8 EiB) are not sizes of files in a guest.
SIZE_MAX: Final = 2**63 - 1

#: A status line that matters: one of the four words first, then its fields.
_LINE: Final = rb"[ \t]*(timeout|exit|lost|missing)(?=[ \t\r]|$)([^\n]*)"
_DECISIVE: Final = re.compile(rb"(?m)^" + _LINE + rb"$")
_ONE_LINE: Final = re.compile(_LINE + rb"\Z")
_NUMBER: Final = re.compile(rb"[0-9]{1,20}")


class Outcome(msgspec.Struct, frozen=True):
    """How the command ended: its exit status, or why there is none."""

    how: Literal["exited", "lost", "missing", "malformed"]
    exit_code: int = 0
    timed_out: bool = False
    #: For ``malformed``: the offending line, shortened, for the task's error.
    detail: str = ""


class Settled(msgspec.Struct, frozen=True):
    """The outcome and the sizes of stdout and stderr when the command ended."""

    outcome: Outcome
    out_end: int = 0
    err_end: int = 0


class StatusReader:
    """Feed it the status stream's bytes; ``settled`` is set by the first decisive line."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._skipping = False
        self.timed_out = False
        self.settled: Settled | None = None

    def feed(self, data: bytes) -> Settled | None:
        """Take one chunk; return the settled outcome once there is one."""
        if self.settled is not None or not data:
            return self.settled
        last_newline = data.rfind(b"\n")
        if last_newline < 0:
            self._keep(data)
            return None
        head, tail = data[: last_newline + 1], data[last_newline + 1 :]
        start = 0
        settled = None
        if self._skipping or self._partial:  # the chunk's first line ends a kept one
            start = head.find(b"\n") + 1
            if not self._skipping:
                settled = self._line(bytes(self._partial) + head[: start - 1])
        self._partial.clear()
        self._skipping = False
        lines = _DECISIVE.finditer(head, start)
        while settled is None and (match := next(lines, None)) is not None:
            settled = self._line(match.group(0))
        if settled is None:
            self._keep(tail)
        self.settled = settled
        return settled

    def _keep(self, data: bytes) -> None:
        if self._skipping:
            return
        if len(self._partial) + len(data) > LINE_MAX:
            self._partial.clear()
            self._skipping = True
            return
        self._partial += data

    def _line(self, raw: bytes) -> Settled | None:
        """One whole line, however it arrived; the same rule as ``_DECISIVE``."""
        match = _ONE_LINE.match(raw) if len(raw) <= LINE_MAX else None
        kind = match.group(1).decode() if match else ""
        if kind == "timeout":
            self.timed_out = True
        elif kind == "missing":
            return Settled(Outcome(how="missing"))
        elif kind in ("exit", "lost") and match:
            return self._ended(kind, match.group(2).split())
        return None

    def _ended(self, kind: str, numbers: list[bytes]) -> Settled:
        words = [kind, *(n.decode(errors="replace") for n in numbers)]
        wanted = 3 if kind == "exit" else 2
        if len(numbers) != wanted or not all(_NUMBER.fullmatch(n) for n in numbers):
            return self._malformed(words)
        values = [int(n) for n in numbers]
        code = values[0] if kind == "exit" else 0
        out_end, err_end = values[-2:]
        if code > EXIT_CODE_MAX or out_end > SIZE_MAX or err_end > SIZE_MAX:
            return self._malformed(words)
        how: Literal["exited", "lost"] = "exited" if kind == "exit" else "lost"
        outcome = Outcome(how=how, exit_code=code, timed_out=self.timed_out)
        return Settled(outcome, out_end, err_end)

    def _malformed(self, words: list[str]) -> Settled:
        text = " ".join(words)
        detail = text if len(text) <= 80 else text[:77] + "..."
        return Settled(Outcome(how="malformed", timed_out=self.timed_out, detail=detail))
