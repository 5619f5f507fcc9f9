"""Go-style duration strings ("90s", "5m", "1h30m") as used throughout Nomad's config."""

from __future__ import annotations

import re
from typing import Final

_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
#: Go's time.Duration is int64 nanoseconds: about 292 years. Longer is an error there too.
MAX_SECONDS: Final = (2**63 - 1) / 1e9


def parse_duration(text: str) -> float:
    """Return seconds for a Go duration string; raise ValueError naming the accepted form."""
    stripped = text.strip()
    if stripped == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _PART.finditer(stripped):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(stripped) or not stripped:
        raise ValueError(
            f"{text!r} is not a duration; use a number with a unit such as 30s, 5m or 1h30m"
        )
    if not total <= MAX_SECONDS:  # also catches inf and nan from a number of 309 digits
        raise ValueError(f"{text!r} is longer than a duration can be (about 292 years)")
    return total
