"""Trio nurseries wrap every error in an ExceptionGroup; callers here want the error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    if len(group.exceptions) != 1:
        return None
    only = group.exceptions[0]
    return _single_leaf(only) if isinstance(only, BaseExceptionGroup) else only


@contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise a group holding exactly one error as that error (several stay a group)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaf = _single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None
