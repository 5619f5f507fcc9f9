"""Processes we did not start (or no longer parent): identity and exit, without polling."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import trio

_POLL_SECONDS = 1.0


def start_time(pid: int) -> str | None:
    """A token that changes when ``pid`` is reused; None when no such process exists."""
    if sys.platform != "linux":
        return _ps_start_time(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # exited, waiting to be reaped
    return fields[19]


def _ps_start_time(pid: int) -> str | None:
    try:
        out = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return None
    return out or None


def alive(pid: int, token: str | None) -> bool:
    """Whether ``pid`` is still the process whose start token we recorded."""
    current = start_time(pid)
    return current is not None and (token is None or current == token)


async def wait_exit(pid: int, token: str | None) -> None:
    """Return once the process is gone: a pidfd on Linux, kqueue on macOS."""
    if not alive(pid, token):
        return
    if sys.platform == "linux":
        await _wait_pidfd(pid, token)
    elif sys.platform == "darwin":
        await _wait_kqueue(pid)
    else:  # pragma: no cover - neither Linux nor macOS
        while alive(pid, token):  # noqa: ASYNC110 - no exit notification on this platform
            await trio.sleep(_POLL_SECONDS)


if sys.platform == "linux":

    async def _wait_pidfd(pid: int, token: str | None) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            if alive(pid, token):
                await trio.lowlevel.wait_readable(fd)
        finally:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


if sys.platform == "darwin":

    async def _wait_kqueue(pid: int) -> None:
        with trio.lowlevel.monitor_kevent(pid, select.KQ_FILTER_PROC) as events:
            note = select.kevent(
                pid,
                filter=select.KQ_FILTER_PROC,
                flags=select.KQ_EV_ADD | select.KQ_EV_ONESHOT,
                fflags=select.KQ_NOTE_EXIT,
            )
            try:
                trio.lowlevel.current_kqueue().control([note], 0)
            except ProcessLookupError:
                return
            await events.receive()


def signal_process(pid: int, token: str | None, signum: int) -> bool:
    """Send ``signum`` if ``pid`` is still the same process; return whether it was sent."""
    if not alive(pid, token):
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True
