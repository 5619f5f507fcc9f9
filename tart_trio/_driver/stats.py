"""Resource usage of a VM: the supervisor's process tree plus whatever holds the VM's disk.

On macOS the guest runs in Virtualization.framework's XPC service, which launchd starts
(it is not a child of ``tart``); it is found as the process that has the VM's ``disk.img``
open. Measured: CPU percent, the CPU in use in MHz (what Nomad calls total ticks) and RSS.
Nothing else is claimed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import trio

from tart_trio._model import HostCompute, NomadTask, ProcessUsage, ResourceUsage

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
            with open(f"{entry.path}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if fields[0] == b"Z":
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        # field 24, rss in pages: the same number as the second field of statm
        table[int(entry.name)] = (int(fields[1]), cpu, int(fields[21]) * _PAGE)
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


def _holder_table(paths: set[str]) -> tuple[dict[str, set[int]], dict[str, str]]:
    """Empty holder sets per path, and each path by its real path (the kernel's name)."""
    return {path: set() for path in paths}, {os.path.realpath(path): path for path in paths}


def _holders_linux(paths: set[str]) -> dict[str, set[int]]:
    """Pids holding each of ``paths`` open: one walk over every process's fds for all."""
    holders, wanted = _holder_table(paths)
    if not paths:
        return holders
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
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target in wanted:
                    holders[wanted[target]].add(int(entry.name))
    return holders


def _holders_lsof(paths: set[str]) -> dict[str, set[int]]:
    """Pids holding each of ``paths`` open: one ``lsof`` for all (each run scans every process)."""
    holders, wanted = _holder_table(paths)
    if not paths:
        return holders
    out = subprocess.run(
        ["lsof", "-w", "-F", "pn", "--", *sorted(wanted)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    pid: int | None = None
    for line in out.splitlines():  # "p<pid>" opens a process; "n<name>" is one of its files
        if line.startswith("p") and line[1:].isdigit():
            pid = int(line[1:])
        elif line.startswith("n") and pid is not None and line[1:] in wanted:
            holders[wanted[line[1:]]].add(pid)
    return holders


#: Samplers of different tasks asking within this many seconds share one process-table
#: scan: with Nomad's 1 s TaskStats per task, N tasks cost about one scan per second
#: instead of N. (A sampler never gets the scan it already had: CPU percentages are
#: computed between the scans' own times.)
SHARED_SCAN_SECONDS: Final = 0.9
#: Which processes hold a VM's disk changes only when the VM starts or stops, and finding
#: them means looking at every process's open files (``lsof`` on macOS, which is slow).
#: The search is redone for a new disk; every HOLDERS_SECONDS while a disk has no holder
#: yet or one of its holders has exited; and otherwise every HOLDERS_REFRESH_SECONDS.
HOLDERS_SECONDS: Final = 5.0
HOLDERS_REFRESH_SECONDS: Final = 60.0
_DISK_INTEREST_SECONDS: Final = 10.0


class _Scan:
    """The process table and the holders of the VMs' disks at one moment."""

    def __init__(self, taken: float, table: ProcTable, holders: dict[str, set[int]]) -> None:
        self.taken = taken
        self.table = table
        self.holders = holders
        self._children: dict[int, list[int]] | None = None

    @property
    def children(self) -> dict[int, list[int]]:
        """pid -> child pids, built once per scan for every sampler that shares it."""
        if self._children is None:
            children: dict[int, list[int]] = {}
            for pid, (ppid, _cpu, _rss) in self.table.items():
                children.setdefault(ppid, []).append(pid)
            self._children = children
        return self._children


class _SharedScans:
    """The latest scan, shared by every task's sampler (see SHARED_SCAN_SECONDS)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: _Scan | None = None
        self._holders_at = float("-inf")
        self._disks: dict[str, float] = {}  # disk image -> when a sampler last asked

    def _usable(self, disk: str, newer_than: float, now: float) -> _Scan | None:
        scan = self._last
        if (
            scan is None
            or (bool(disk) and disk not in scan.holders)
            or now - scan.taken > SHARED_SCAN_SECONDS
            or scan.taken <= newer_than
        ):
            return None
        return scan

    def cached(self, disk: str, newer_than: float) -> _Scan | None:
        """The shared scan if it will do, without scanning or waiting (None otherwise)."""
        if not self._lock.acquire(blocking=False):  # a scan is in progress: wait in a thread
            return None
        try:
            now = time.monotonic()
            scan = self._usable(disk, newer_than, now)
            if scan is not None and disk:
                self._disks[disk] = now
            return scan
        finally:
            self._lock.release()

    def get(self, disk: str, newer_than: float) -> _Scan:
        """A scan at most SHARED_SCAN_SECONDS old, newer than ``newer_than``, covering ``disk``."""
        with self._lock:  # a concurrent caller waits for the scan in progress and reuses it
            now = time.monotonic()
            if disk:
                self._disks[disk] = now
            for path, asked in list(self._disks.items()):
                if now - asked > _DISK_INTEREST_SECONDS:
                    del self._disks[path]
            scan = self._usable(disk, newer_than, now)
            new_disk = bool(disk) and (self._last is None or disk not in self._last.holders)
            if scan is None:
                scan = self._last
                linux = sys.platform.startswith("linux")
                table = _linux_table() if linux else _ps_table()
                taken = time.monotonic()  # when the CPU times were read, not after the holders
                if scan is None or new_disk or self._holders_stale(scan.holders, table, now):
                    holders = _disk_holders(set(self._disks), linux)
                    self._holders_at = now
                else:
                    holders = scan.holders
                scan = self._last = _Scan(taken, table, holders)
            return scan

    def _holders_stale(self, holders: dict[str, set[int]], table: ProcTable, now: float) -> bool:
        elapsed = now - self._holders_at
        if elapsed > HOLDERS_REFRESH_SECONDS:
            return True
        if elapsed <= HOLDERS_SECONDS:
            return False
        return any(
            not holders.get(disk) or not holders[disk] <= table.keys() for disk in self._disks
        )


def _disk_holders(disks: set[str], linux: bool) -> dict[str, set[int]]:
    present = {path for path in disks if os.path.exists(path)}
    holders = _holders_linux(present) if linux else _holders_lsof(present)
    for path in disks - present:
        holders[path] = set()
    return holders


_SCANS: Final = _SharedScans()


Snapshot = tuple[float, dict[int, tuple[float, int]]]


def snapshot(roots: list[int], disk: str, newer_than: float = float("-inf")) -> Snapshot:
    """(scan time, {pid: (CPU seconds, RSS)}) of the roots, their descendants, the disk holders."""
    return _select(_SCANS.get(disk, newer_than), roots, disk)


def cached_snapshot(roots: list[int], disk: str, newer_than: float) -> Snapshot | None:
    """:func:`snapshot` from the shared scan when it is fresh enough (cheap: no thread)."""
    scan = _SCANS.cached(disk, newer_than)
    return None if scan is None else _select(scan, roots, disk)


def _select(scan: _Scan, roots: list[int], disk: str) -> Snapshot:
    table = scan.table
    wanted = {pid for pid in roots if pid in table}
    wanted |= scan.holders.get(disk, set()) & set(table)
    children = scan.children
    stack = list(wanted)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in wanted:
                wanted.add(child)
                stack.append(child)
    return scan.taken, {pid: (table[pid][1], table[pid][2]) for pid in wanted}


def host_compute(core_mhz: list[int], override_total_mhz: int = 0) -> HostCompute | None:
    """The host's CPU from the topology Nomad sends: as Nomad's ``Topology.TotalCompute``
    (the operator's ``cpu_total_compute`` if set, else the sum of the cores' speeds) and
    ``NumCores``. None when it says nothing usable."""
    total = override_total_mhz or sum(core_mhz)
    if not core_mhz or total <= 0:
        return None
    return HostCompute(total_mhz=float(total), cores=len(core_mhz))


def task_compute(task: NomadTask) -> HostCompute | None:
    """Without a topology (Nomad before 1.7, or a reattach without SetConfig): the node's
    usable compute is ``cpu_shares / PercentTicks`` (Nomad's task runner), on every core."""
    if task.cpu_shares <= 0 or task.percent_ticks <= 0:
        return None
    return HostCompute(total_mhz=task.cpu_shares / task.percent_ticks, cores=os.cpu_count() or 1)


class Sampler:
    """Turns successive snapshots into CPU percentages and MHz, as Nomad's executor does.

    Percent is a process's CPU time over the interval's wall time (100 per busy core),
    summed over the VM's processes; MHz is Nomad's TicksConsumed: percent / 100 * the
    host's total MHz / its cores (``client/lib/cpustats/stats.go``).
    """

    def __init__(
        self, sources: Callable[[], tuple[list[int], str]], compute: HostCompute | None = None
    ) -> None:
        self._sources = sources
        self._compute = compute
        self._last: tuple[float, dict[int, tuple[float, int]]] | None = None

    def _mhz(self, percent: float) -> float | None:
        if self._compute is None:
            return None
        return percent / 100 * self._compute.total_mhz / self._compute.cores

    async def sample(self) -> ResourceUsage:
        """One sample; the first reports 0 % CPU (there is no interval yet)."""
        roots, disk = self._sources()
        newer_than = self._last[0] if self._last is not None else float("-inf")
        # Most samples reuse the scan another task's sampler just took: no thread hop then.
        taken = cached_snapshot(roots, disk, newer_than)
        if taken is None:
            taken = await trio.to_thread.run_sync(snapshot, roots, disk, newer_than)
        now, procs = taken
        percent = 0.0
        by_pid: dict[str, ProcessUsage] = {}
        if self._last is not None:
            then, before = self._last
            elapsed = max(now - then, 1e-6)
            for pid, (cpu, rss) in procs.items():
                delta = max(cpu - before.get(pid, (cpu, 0))[0], 0.0)
                share = delta / elapsed * 100
                by_pid[str(pid)] = ProcessUsage(share, self._mhz(share), rss)
                percent += share
        self._last = (now, procs)
        rss = sum(rss for _, rss in procs.values())
        return ResourceUsage(
            timestamp=datetime.now(UTC),
            total=ProcessUsage(percent, self._mhz(percent), rss),
            by_pid=by_pid,
        )
