"""Resource usage of a VM: the supervisor's process tree plus whatever holds the VM's disk.

On macOS the guest runs in Virtualization.framework's XPC service, which launchd starts
(it is not a child of ``tart``); it is found as the process that has the VM's ``disk.img``
open. Measured: CPU percent and total ticks, and RSS. Nothing else is claimed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import trio

from tart_trio._model import ResourceUsage

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CPUTIME = re.compile(r"(?:(?:(\d+)-)?(\d+):)?(\d+):(\d+(?:\.\d+)?)")

ProcTable = dict[int, tuple[int, float, int]]  # pid -> (ppid, cpu seconds, rss bytes)


def _linux_table() -> ProcTable:
    table: ProcTable = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            statm = Path(entry.path, "statm").read_text().split()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        table[int(entry.name)] = (int(fields[1]), cpu, int(statm[1]) * _PAGE)
    return table


def _ps_table() -> ProcTable:
    out = subprocess.run(
        ["ps", "-axo", "pid=,ppid=,rss=,cputime="], capture_output=True, text=True, check=False
    ).stdout
    table: ProcTable = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        match = _CPUTIME.fullmatch(parts[3])
        if not match:
            continue
        days, hours, minutes, seconds = match.groups()
        cpu = int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
        table[int(parts[0])] = (int(parts[1]), cpu, int(parts[2]) * 1024)
    return table


def _holders_linux(path: str) -> set[int]:
    holders = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) == path:
                        holders.add(int(entry.name))
                        break
                except OSError:
                    continue
    return holders


def _holders_lsof(path: str) -> set[int]:
    out = subprocess.run(["lsof", "-t", path], capture_output=True, text=True, check=False).stdout
    return {int(pid) for pid in out.split() if pid.isdigit()}


def snapshot(roots: list[int], disk: str) -> dict[int, tuple[float, int]]:
    """CPU seconds and RSS of the roots, their descendants and the disk's holders."""
    linux = sys.platform.startswith("linux")
    table = _linux_table() if linux else _ps_table()
    wanted = {pid for pid in roots if pid in table}
    if disk and os.path.exists(disk):
        wanted |= (_holders_linux(disk) if linux else _holders_lsof(disk)) & set(table)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu, _rss) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(wanted)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in wanted:
                wanted.add(child)
                stack.append(child)
    return {pid: (table[pid][1], table[pid][2]) for pid in wanted}


class Sampler:
    """Turns successive snapshots into CPU percentages."""

    def __init__(self, sources: Callable[[], tuple[list[int], str]]) -> None:
        self._sources = sources
        self._last: tuple[float, dict[int, tuple[float, int]]] | None = None

    async def sample(self) -> ResourceUsage:
        """One sample; the first reports 0 % CPU (there is no interval yet)."""
        roots, disk = self._sources()
        now = trio.current_time()
        procs = await trio.to_thread.run_sync(snapshot, roots, disk)
        percent = 0.0
        by_pid: dict[str, tuple[float, int]] = {}
        if self._last is not None:
            then, before = self._last
            elapsed = max(now - then, 1e-6)
            for pid, (cpu, rss) in procs.items():
                delta = max(cpu - before.get(pid, (cpu, 0))[0], 0.0)
                by_pid[str(pid)] = (delta / elapsed * 100, rss)
                percent += delta / elapsed * 100
        self._last = (now, procs)
        return ResourceUsage(
            timestamp=datetime.now(UTC),
            cpu_percent=percent,
            cpu_total_ticks=sum(cpu for cpu, _ in procs.values()) * _CLK_TCK,
            rss_bytes=sum(rss for _, rss in procs.values()),
            by_pid=by_pid,
        )
