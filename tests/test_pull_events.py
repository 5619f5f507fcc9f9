"""How many task events a long pull costs (Nomad keeps only a task's last ten)."""

from __future__ import annotations

import itertools

from tart_trio._images.pulls import PROGRESS_EVENT_SECONDS, ProgressThrottle


def test_an_hour_long_pull_yields_an_event_every_two_minutes() -> None:
    throttle = ProgressThrottle(now=0.0)
    # Tart reports every whole percent; an hour-long pull reports 100 of them
    due = [t for t in (36.0 * p for p in range(1, 101)) if throttle.due(t)]
    assert PROGRESS_EVENT_SECONDS == 120.0
    assert len(due) == 25  # every 4th percent (144 s apart): never two within 2 minutes
    assert all(b - a >= 120.0 for a, b in itertools.pairwise(due))
    assert due[0] >= 120.0, "a short pull reports no progress event at all"
