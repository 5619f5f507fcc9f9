"""Fixtures that launch our plugin under the Nomad client stand-in."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tart_trio._host.fifo import ATOMIC_WRITE
from tart_trio._tart import processes
from tests.conformance.nomadsim import NomadSim, open_nomadsim
from tests.plugin_process import plugin_command

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples"


def launch_args(log_file: Path, **env: str) -> dict[str, Any]:
    """``launch`` arguments for our plugin, as Nomad's loader would start it."""
    return {"cmd": plugin_command(), "env": env, "log_file": str(log_file)}


def plugin_log(log_file: Path) -> list[dict[str, Any]]:
    """The plugin's stderr as go-plugin re-logged it (one JSON object a line)."""
    if not log_file.exists():
        return []
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]


@pytest.fixture
async def sim() -> AsyncIterator[NomadSim]:
    """A Nomad client stand-in with nothing launched yet."""
    async with open_nomadsim() as nomad:
        yield nomad


def _live_commands() -> Iterator[tuple[int, tuple[str, ...]]]:
    """Live (non-zombie) processes and their argv."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if raw and state != "Z":
            yield int(entry.name), tuple(raw.rstrip(b"\0").decode(errors="replace").split("\0"))


def _live_processes(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker``."""
    return [pid for pid, argv in _live_commands() if marker in " ".join(argv)]


def live_supervisor_pids() -> list[int]:
    """Live VM supervisors, recognised exactly as the driver recognises them."""
    return [pid for pid, argv in _live_commands() if processes.is_supervisor(argv)]


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """After each test: no supervisor or plugin process, VM bundle or fd of ours remains."""
    fds_before = set(os.listdir("/proc/self/fd"))
    yield
    leftovers = {
        "supervisors": [p for p in live_supervisor_pids() if _in_tmp(p, tmp_path)],
        "plugins": _children_named("nomad-driver-tart"),
    }
    home = tmp_path / "tart-home" / "vms"
    if home.exists():
        leftovers["VM bundles"] = sorted(p.name for p in home.iterdir())
    leaked_fds = set(os.listdir("/proc/self/fd")) - fds_before
    live_fds = [fd for fd in leaked_fds if Path(f"/proc/self/fd/{fd}").exists()]
    if live_fds:
        leftovers["file descriptors"] = [os.readlink(f"/proc/self/fd/{fd}") for fd in live_fds]
    problems = {k: v for k, v in leftovers.items() if v}
    assert not problems, f"left behind after {request.node.name}: {problems}"


def _in_tmp(pid: int, tmp_path: Path) -> bool:
    """Whether a supervisor works for this test (its TART_HOME is under tmp_path).

    Only a whole path component counts: ``…/test_x1/`` is not under ``…/test_x``, so neither
    another test of this process nor another process's test (pytest-xdist workers have
    temporary directories of their own) is taken for this one.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    path = str(tmp_path).encode()
    return any(path + b"/" in entry or entry.endswith(path) for entry in environ.split(b"\0"))


def _children_named(marker: str) -> list[int]:
    """Live plugin processes started (through nomadsim) by this test process."""
    me = os.getpid()
    found = []
    for pid in _live_processes(marker):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        grandparent = 0
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{parent}/stat").read_text()
            grandparent = int(stat.rsplit(")", 1)[1].split()[1])
        if me in (parent, grandparent):
            found.append(pid)
    return found


def delivered_once_or_one_write_twice(got: str, expected: str) -> bool:
    """What a task's log holds after a plugin kill: ``expected`` exactly, or, if the kill
    fell between a write to the FIFO and the save of the cursor after it, ``expected`` with
    that one write (at most ``ATOMIC_WRITE`` bytes) again right after itself."""
    extra = len(got) - len(expected)
    if extra == 0:
        return got == expected
    if not 0 < extra <= ATOMIC_WRITE:
        return False
    prefix = _same_start(got, expected)
    suffix = _same_start(got[::-1], expected[::-1])
    # got == expected[:end] + expected[end - extra :] for an end of the repeated write
    return max(extra, len(got) - suffix) <= min(prefix, len(expected))


def _same_start(a: str, b: str) -> int:
    """How many characters ``a`` and ``b`` have in common from their start."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def unchanged_for(path: Path, seconds: float) -> Callable[[], bool]:
    """True once the file at ``path`` exists and has not changed for ``seconds``."""
    seen: list[tuple[float, bytes | None]] = []

    def check() -> bool:
        try:
            content: bytes | None = path.read_bytes()
        except OSError:
            content = None
        now = time.monotonic()
        if not seen or seen[-1][1] != content:
            seen.append((now, content))
        return content is not None and now - seen[-1][0] >= seconds

    return check


async def until(check: Callable[[], object], seconds: float = 30) -> None:
    """Wait for a condition on an external process (a VM, a guest, a file) with a deadline."""
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.05)
