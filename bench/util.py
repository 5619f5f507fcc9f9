"""Statistics, /proc sampling and the machine description shared by every benchmark."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# ---- statistics -------------------------------------------------------------------------


@dataclass
class Sample:
    """Repeated measurements of one quantity (seconds, bytes, ratios, ...)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    @property
    def spread_pct(self) -> float:
        """Half the min-max range relative to the median, in percent."""
        if not self.values or self.median == 0:
            return float("nan")
        return 100.0 * (self.high - self.low) / 2 / abs(self.median)

    def percentile(self, pct: float) -> float:
        """Nearest-rank percentile (p99 of 200 calls is the 198th fastest)."""
        if not self.values:
            return float("nan")
        ordered = sorted(self.values)
        rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": len(self.values),
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "spread_pct": self.spread_pct,
            "values": self.values,
        }


def paired_ratios(figure: Sample, baseline: Sample) -> Sample:
    """Per-run ratios of interleaved runs (run i of the figure over run i of the baseline)."""
    return Sample([f / b for f, b in zip(figure.values, baseline.values, strict=False) if b])


# ---- processes ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own user+system seconds, reaped children's user+system seconds) of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    children = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return own, children


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def load_1min() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def busy_fraction(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat): the machine's other load."""

    def snap() -> tuple[int, int]:
        parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = parts[3] + parts[4]
        return sum(parts) - idle, sum(parts)

    busy0, total0 = snap()
    time.sleep(seconds)
    busy1, total1 = snap()
    return (busy1 - busy0) / max(total1 - total0, 1)


# ---- the machine --------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M).group(1))  # type: ignore[union-attr]
    os_release = Path("/etc/os-release").read_text()
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)', os_release, re.M)
    virt = _first_line(["systemd-detect-virt"]) if shutil.which("systemd-detect-virt") else ""
    hypervisor = "hypervisor" in cpuinfo
    return {
        "cpu": (model.group(1) if model else platform.processor())
        + (f" @ {float(mhz.group(1)):.0f} MHz" if mhz else ""),
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": (pretty.group(1) if pretty else platform.system()) + f", kernel {platform.release()}",
        "virtualised": virt if virt and virt != "none" else ("yes" if hypervisor else "no"),
        "python": f"{platform.python_implementation()} {platform.python_version()}"
        f" ({sys.executable})",
        "go": _first_line(["go", "version"]),
        "openssh": _first_line(["ssh", "-V"]),
    }


def versions() -> dict[str, str]:
    """Versions of the Python libraries on the measured paths."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nomad-driver-tart", "trio", "trio-asyncio", "grpclib", "asyncssh", "msgspec"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def fmt_seconds(value: float) -> str:
    """Seconds with a readable unit."""
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1:
        return f"{value:.2f} s"
    if abs(value) >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.1f} µs"


def fmt_bytes(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1 << 20:
        return f"{value / (1 << 20):.1f} MiB"
    return f"{value / 1024:.0f} KiB"


class CpuMeter:
    """CPU time of one process over a window, in nanoseconds where the kernel allows.

    Sums ``/proc/<pid>/task/*/schedstat`` (ns); when a thread ended inside the window its
    time is lost there, so the 10 ms-tick ``utime+stime`` of ``/proc/<pid>/stat`` (which
    keeps dead threads) is used instead.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._threads0 = self._threads()
        self._ticks0 = cpu_seconds(pid)
        self._t0 = time.monotonic()

    def _threads(self) -> dict[str, int]:
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    out[tid] = int(f.read().split()[0])
            except OSError:
                continue
        return out

    def read(self) -> dict[str, float]:
        """CPU seconds used since construction (own, children) and the wall seconds."""
        threads1 = self._threads()
        own1, children1 = cpu_seconds(self.pid)
        wall = time.monotonic() - self._t0
        if set(self._threads0) <= set(threads1):
            own = sum(ns - self._threads0.get(tid, 0) for tid, ns in threads1.items()) / 1e9
        else:
            own = own1 - self._ticks0[0]
        return {"cpu": own, "children_cpu": children1 - self._ticks0[1], "wall": wall}
