"""Render the bench results as BENCHMARKS.md: the machine, then one table per benchmark."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from bench.util import fmt_bytes, fmt_seconds

# ---- targets (fixed before measuring; see BENCHMARKS.md for the reasoning) ------------------

HANDSHAKE_VS_PASS_IMPORT = 2.0  # exec -> handshake within 2x (python -c pass + import time)
PLUGIN_INFO_MAX = 1.0  # s, exec -> first PluginInfo through go-plugin
IMPORT_MAX = 0.25  # s, import tart_trio._rpc.plugin
DECODE_RATIO_MAX = 1.0  # msgspec Structs no slower than builtins + hand validation
THROUGHPUT_RATIO_MIN = 0.8  # of OpenSSH's `ssh guest cat`
CPU_PER_10K_MAX = 0.025  # s of plugin CPU per 10k log lines
IDLE_CPU_MAX = 0.5  # % of one core with the most tasks, nothing asking
STATS_CPU_MAX = 5.0  # % of one core with the most tasks and a 1 s TaskStats stream each
RSS_PER_TASK_MAX = 1 << 20  # bytes of plugin RSS per running task
INSPECT_P50_MAX = 0.010  # s under load
INSPECT_P99_MAX = 0.100  # s under load
ATTACK_P99_MAX = 1.0  # s: InspectTask p99 while one guest attacks
START_OVERHEAD_1_MAX = 0.25  # s beyond tart, one task
START_OVERHEAD_20_MAX = 1.0  # s beyond tart, median task of a concurrent batch
RECOVER_ALL_MAX = 1.0  # s for RecoverTask of every task
FINGERPRINT_CACHE_RATIO_MAX = 1.5  # fingerprint with 50 cached images vs an empty cache
TARGET_TASKS = 50  # the idle targets are for this many running tasks
PORT_THROUGHPUT_MIN = 0.9  # forwarded TCP throughput against a direct connection to the guest
PORT_ADDED_P50_MAX = 0.0002  # s added to a round trip's p50 by the forward
PORT_IDLE_CPU_MAX = 0.005  # s of supervisor CPU in the idle window, forward listening


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**no**")


def _spread(d: dict[str, Any], fmt: Any = fmt_seconds) -> str:
    if not d or not d.get("n"):
        return "n/a"
    return f"±{d['spread_pct']:.0f} % ({fmt(d['min'])} – {fmt(d['max'])}, n={d['n']})"


def _ratio(d: dict[str, Any]) -> str:
    if not d or not d.get("n"):
        return "n/a"
    return f"{d['median']:.2f}× ({d['min']:.2f}–{d['max']:.2f})"


def _rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value / 1000:,.0f} k lines/s"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f} %"


def _table(rows: list[list[str]]) -> list[str]:
    head = ["Figure", "Median", "Baseline", "Baseline median", "Ratio", "Spread", "Target", "Met?"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least-squares line (intercept, slope)."""
    n = len(xs)
    if n < 2:
        return (ys[0] if ys else 0.0), 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def _pp(delta: float) -> str:
    return f"{round(delta, 2) + 0.0:+.2f} pp"


def _finite(values: Any) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def _tasks(n: int) -> str:
    return f"{n} running task" + ("" if n == 1 else "s")


def _med(values: list[float]) -> float:
    from statistics import median

    return median(values) if values else float("nan")


def _stats(values: list[float]) -> dict[str, Any]:
    from bench.util import Sample

    return Sample(values).as_dict()


class Report:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.lines: list[str] = []
        self.summary: list[tuple[str, str, str, bool | None]] = []
        self.misses: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def _asyncssh_lazy(self) -> bool:
        start = self.doc["results"].get("startup", {})
        names = [name for name, _ in start.get("import_breakdown", [])]
        return bool(names) and "asyncssh" not in names

    def target(self, bench: str, target: str, figure: str, ok: bool | None) -> str:
        self.summary.append((bench, target, figure, ok))
        return _met(ok)

    # ---- sections -------------------------------------------------------------------------

    def startup(self, r: dict[str, Any]) -> None:
        self.add("## 1. Plugin start", "")
        if "error" in r:
            self.add(f"Failed: `{r['error']}`", "")
            return
        hs, pp, imp = r["plugin_handshake"], r["python_pass"], r["plugin_import"]
        info, go_l, go_h = r["plugin_info"], r["go_launch"], r["go_handshake"]
        pass_import = pp["median"] + imp["median"]
        ok_a = r["ratio_vs_pass_plus_import"]["median"] <= HANDSHAKE_VS_PASS_IMPORT
        ok_b = info["median"] <= PLUGIN_INFO_MAX
        ok_c = imp["median"] <= IMPORT_MAX
        rows = [
            [
                "exec → handshake line (plugin)",
                fmt_seconds(hs["median"]),
                "`python -c pass` + import time",
                fmt_seconds(pass_import),
                _ratio(r["ratio_vs_pass_plus_import"]),
                _spread(hs),
                f"≤ {HANDSHAKE_VS_PASS_IMPORT:g}× baseline",
                self.target(
                    "1 start",
                    f"handshake ≤ {HANDSHAKE_VS_PASS_IMPORT:g}× (python -c pass + import)",
                    f"{r['ratio_vs_pass_plus_import']['median']:.2f}×",
                    ok_a,
                ),
            ],
            [
                "exec → handshake line (plugin)",
                fmt_seconds(hs["median"]),
                "`python -c pass` (exec → exit)",
                fmt_seconds(pp["median"]),
                _ratio(r["ratio_vs_python"]),
                _spread(pp),
                "context (the interpreter floor)",
                "—",
            ],
            [
                "exec → handshake line (plugin)",
                fmt_seconds(hs["median"]),
                "minimal Go go-plugin server",
                fmt_seconds(go_h["median"]),
                _ratio(r["ratio_vs_go"]),
                _spread(go_h),
                "context (what a Go driver pays)",
                "—",
            ],
            [
                "exec → first `PluginInfo` via nomadsim",
                fmt_seconds(info["median"]),
                "Go server: exec → connected + dispensed",
                fmt_seconds(go_l["median"]),
                _ratio(r["ratio_info_vs_go"]),
                _spread(info),
                f"≤ {PLUGIN_INFO_MAX:g} s",
                self.target(
                    "1 start",
                    f"exec → PluginInfo ≤ {PLUGIN_INFO_MAX:g} s",
                    fmt_seconds(info["median"]),
                    ok_b,
                ),
            ],
            [
                "`import tart_trio._rpc.plugin`",
                fmt_seconds(imp["median"]),
                "—",
                "—",
                "—",
                _spread(imp),
                f"≤ {IMPORT_MAX * 1000:.0f} ms",
                self.target(
                    "1 start",
                    f"import ≤ {IMPORT_MAX * 1000:.0f} ms",
                    fmt_seconds(imp["median"]),
                    ok_c,
                ),
            ],
        ]
        self.add(*_table(rows), "")
        heavy = ", ".join(f"{name} {fmt_seconds(s)}" for name, s in r["import_breakdown"])
        self.add(
            "Go-side handshake time as nomadsim measures it (exec → handshake parsed): plugin "
            f"{fmt_seconds(r['plugin_launch_handshake']['median'])}, Go server "
            f"{fmt_seconds(r['go_launch_handshake']['median'])}.",
            "",
            "Heaviest packages in one `python -X importtime -c 'import tart_trio._rpc.plugin'` "
            f"(cumulative, a package's time includes what it imports): {heavy}.",
            "",
        )
        if not (ok_a and ok_b and ok_c):
            self.misses.append(
                "**Plugin start.** Nearly all of the start is importing: the handshake is the "
                "interpreter plus the import of `tart_trio._rpc.plugin` (measured "
                f"{fmt_seconds(imp['median'])}, against an interpreter floor of "
                f"{fmt_seconds(pp['median'])} for `python -c pass` in the same run; absolute "
                "times scale with the machine, the handshake-to-floor ratio does not). The "
                f"heaviest imports are {heavy}: trio, grpclib and the protobuf modules are "
                "needed before the handshake; asyncssh (with cryptography) is already "
                "imported only when the first SSH session opens. What would cut it further "
                "is importing the modules for tasks (`_task`, `_guest`, the pulls) on the "
                "first StartTask or RecoverTask instead of at start, which the three launches "
                "per agent start would each save."
            )

    def decode(self, r: dict[str, Any]) -> None:
        self.add("## 2. Config decode", "")
        if "error" in r:
            self.add(f"Failed: `{r['error']}`", "")
            return
        rows = []
        for name, p in r.items():
            if not isinstance(p, dict) or "figure" not in p:
                continue
            ok = p["ratio"]["median"] <= DECODE_RATIO_MAX and p["same_result"]
            rows.append(
                [
                    f"`decode_task_config`, {name} ({p['bytes']} B)",
                    fmt_seconds(p["figure"]["median"]),
                    "`msgspec.msgpack.decode` to builtins + hand validation",
                    fmt_seconds(p["baseline"]["median"]),
                    _ratio(p["ratio"]),
                    _spread(p["figure"]),
                    f"≤ {DECODE_RATIO_MAX:g}× (same result)",
                    self.target(
                        "2 decode",
                        f"{name}: ≤ {DECODE_RATIO_MAX:g}× hand-validated builtins",
                        f"{p['ratio']['median']:.2f}×",
                        ok,
                    ),
                ]
            )
        self.add(*_table(rows), "")
        parts = [
            f"{name}: {fmt_seconds(p['builtins_decode_only']['median'])}"
            for name, p in r.items()
            if isinstance(p, dict) and "figure" in p
        ]
        same = all(p["same_result"] for p in r.values() if isinstance(p, dict) and "figure" in p)
        self.add(
            "Per call, in-process, loops of ~0.15 s per run. The bare builtins decode alone "
            f"(no validation) takes {'; '.join(parts)}. The hand validator "
            "(`bench/handvalidate.py`) produces "
            + ("the same" if same else "**not** the same")
            + " value as `msgspec.to_builtins(decode_task_config(...))` for both payloads. "
            "The rich payload's time is mostly the semantic checks both sides share "
            "(`ipaddress.IPv4Network` for the CIDRs, the share-name rules).",
            "",
        )

    def logs(self, r: dict[str, Any]) -> None:
        self.add("## 3. Log throughput", "")
        if not r.get("plugin") or not r.get("openssh"):
            self.add(f"Failed: `{r.get('error', 'no runs')}`", "")
            return
        plugin = _stats([x["lines_per_s"] for x in r["plugin"]])
        ssh = _stats([x["lines_per_s"] for x in r["openssh"]])
        cpu = _stats([x["cpu_per_10k_lines"] for x in r["plugin"]])
        ssh_cpu = _stats([x["cpu_per_10k_lines"] for x in r["openssh"]])
        loss = [x["loss_pct"] for x in r["plugin"]]
        ok_t = r["ratio"]["median"] >= THROUGHPUT_RATIO_MIN
        ok_c = cpu["median"] <= CPU_PER_10K_MAX
        breaks = r.get("load_sequence_breaks")
        ok_l = (max(loss) == 0 and not breaks) if loss else None
        data = r["data"]
        rows = [
            [
                "guest → SSH → plugin → stdout FIFO → `vm.stdout.0`",
                _rate(plugin["median"]),
                "OpenSSH `ssh guest cat` → file",
                _rate(ssh["median"]),
                _ratio(r["ratio"]),
                _spread(plugin, _rate),
                f"≥ {THROUGHPUT_RATIO_MIN:.0%} of OpenSSH",
                self.target(
                    "3 logs",
                    f"throughput ≥ {THROUGHPUT_RATIO_MIN:.0%} of OpenSSH",
                    f"{r['ratio']['median']:.0%}",
                    ok_t,
                ),
            ],
            [
                "plugin CPU per 10k lines",
                fmt_seconds(cpu["median"]),
                "`ssh` client CPU per 10k lines",
                fmt_seconds(ssh_cpu["median"]),
                f"{cpu['median'] / ssh_cpu['median']:.1f}×" if ssh_cpu["median"] else "n/a",
                _spread(cpu),
                f"≤ {CPU_PER_10K_MAX * 1000:.0f} ms",
                self.target(
                    "3 logs",
                    f"CPU ≤ {CPU_PER_10K_MAX * 1000:.0f} ms / 10k lines",
                    fmt_seconds(cpu["median"]),
                    ok_c,
                ),
            ],
            [
                "lines lost on the way (single stream)",
                f"{_med(loss):.3f} % (max {max(loss):.3f} %)" if loss else "n/a",
                "OpenSSH",
                f"{_med([x['loss_pct'] for x in r['openssh']]):.3f} %",
                "—",
                "—",
                "0",
                self.target(
                    "3 logs",
                    "no log lines lost (one stream, and ten at full speed)",
                    (f"max {max(loss):.3f} %; {breaks} breaks" if loss else "n/a"),
                    ok_l,
                ),
            ],
            [
                "sequence breaks, ten streams at full speed (benchmark 5's load)",
                f"{breaks} in {r.get('load_lines', 0):,} lines" if breaks is not None else "n/a",
                "—",
                "—",
                "—",
                "—",
                "0",
                "(above)",
            ],
        ]
        self.add(*_table(rows), "")
        self.add(
            f"{len(r['plugin'])} alternating runs of {data['lines']:,} syslog-style lines "
            f"({data['bytes'] / 1e6:.1f} MB, {data['line_bytes']:.0f} B/line) cat'ed in the "
            "guest; rate = bytes between the first and the last observed growth of the output "
            "file (polled every 2 ms) / line length. Plugin MB/s: "
            f"{_med([x['mb_per_s'] for x in r['plugin']]):.1f}; OpenSSH MB/s: "
            f"{_med([x['mb_per_s'] for x in r['openssh']]):.1f}.",
            "",
        )
        a_def, a_gcm = r.get("asyncssh_default"), r.get("asyncssh_aes128gcm")
        pump_cpu = r.get("pump_cpu_per_10k_lines")
        extra = []
        for name, a in (("asyncssh alone", a_def), ("asyncssh alone", a_gcm)):
            if a:
                extra.append(
                    f"| {name} on a plain asyncio loop, `{a['cipher']}` (best of 3) | "
                    f"{_rate(a['lines_per_s'])}, {fmt_seconds(a['cpu_per_10k_lines'])} CPU "
                    f"/ 10k lines | OpenSSH | {_rate(ssh['median'])} | "
                    f"{a['lines_per_s'] / ssh['median']:.2f}× | — | context | — |"
                )
        if pump_cpu is not None:
            extra.append(
                "| the plugin's line pump alone (`_guest.cursor.LinePump`, in-process) | "
                f"{fmt_seconds(pump_cpu)} CPU / 10k lines | plugin total | "
                f"{fmt_seconds(cpu['median'])} | {pump_cpu / cpu['median']:.0%} of it | — | "
                "context | — |"
            )
        save = r.get("cursor_save_per_10k_lines")
        if save is not None:
            every = r.get("cursor_save_bytes", 65536)
            extra.append(
                f"| … of which saving the log cursor file once per {every:,} bytes written "
                "(`_guest.cursor.CursorFile.save`, "
                f"{fmt_seconds(r['cursor_save_seconds'])} a call) | "
                f"{fmt_seconds(save)} CPU / 10k lines | plugin total | "
                f"{fmt_seconds(cpu['median'])} | {save / cpu['median']:.0%} of it | — | "
                "context | — |"
            )
        if extra:
            self.add(
                "Where the plugin's CPU goes (same guest, same data):",
                "",
                *_table([]),
                *extra,
                "",
            )
        if not ok_t or not ok_c:
            same = a_gcm or a_def
            rest = cpu["median"] - (same["cpu_per_10k_lines"] if same else 0) - (pump_cpu or 0)
            self.misses.append(
                "**Log throughput.** The plugin is CPU-bound on one thread: "
                f"{fmt_seconds(cpu['median'])} of CPU per 10k lines at "
                f"{_rate(plugin['median'])}. asyncssh alone on a plain asyncio loop, with the "
                "cipher the plugin prefers (`_guest.ssh.CIPHERS`: "
                f"`{same['cipher'] if same else 'aes128-gcm@openssh.com'}`), needs "
                + (f"{fmt_seconds(same['cpu_per_10k_lines'])}" if same else "a fraction of it")
                + " per 10k lines; the plugin's line pump (a fixed-size cursor record "
                "`pwrite` into a file kept open, once per chunk) "
                + (f"{fmt_seconds(pump_cpu)}" if pump_cpu is not None else "a little")
                + f"; the remaining {fmt_seconds(max(rest, 0))} is running asyncssh on "
                "trio-asyncio's loop (every asyncio callback is scheduled through trio) and "
                "the FIFO writes. A larger SSH window and packet size, bigger reads and "
                "yielding to the loop between chunks did not move the rate beyond the run-to-"
                "run spread on this machine. What would close the gap is reading SSH on a "
                "native asyncio loop, which the one-bridge design rules out. The rate is "
                "hundreds of times what a chatty macOS guest logs: headroom, not a limit; the "
                "CPU-per-line target is the one that matters."
            )
        if ok_l is False:
            self.misses.append(
                "**Lost log lines.** `_fifo.FifoWriter` never blocks: what the FIFO cannot "
                "take waits in a bounded buffer (8 MiB per stream) and is dropped beyond it. "
                "With the reader (Nomad's logmon; here nomadsim's) slower than SSH delivers, "
                f"up to {max(loss):.3f} % of a full-speed single stream and "
                f"{r.get('load_sequence_breaks', 0)} sequence breaks in "
                f"{r.get('load_lines', 0):,} lines with ten streams at full speed were lost. "
                "OpenSSH loses nothing because the pipe back-pressures it. Fix: past a "
                "high-water mark, stop reading the SSH channel until the buffer drains, so "
                "the channel's flow-control window pauses the guest's `log stream` instead "
                "of losing lines; drop only when logmon is gone or stuck for long."
            )

    def idle(self, r: dict[str, Any]) -> None:
        self.add("## 4. Idle cost", "")
        if "error" in r and not r.get("idle"):
            self.add(f"Failed: `{r['error']}`", "")
            return
        idle = r["idle"]
        base = idle[0]
        top = idle[-1]
        first = idle[1] if len(idle) > 2 else base
        growth = (top["rss"] - first["rss"]) / max(top["tasks"] - first["tasks"], 1)
        counts = [p["tasks"] for p in idle]
        cpu_fit = _fit(counts, [p["cpu_pct"] for p in idle])
        stats_fit = _fit(counts, [p["stats_cpu_pct"] for p in idle])
        cpu_at = cpu_fit[0] + cpu_fit[1] * TARGET_TASKS
        stats_at = stats_fit[0] + stats_fit[1] * TARGET_TASKS
        measured_max = top["tasks"] >= TARGET_TASKS
        cpu_x = top["cpu_pct"] if measured_max else cpu_at
        stats_x = top["stats_cpu_pct"] if measured_max else stats_at
        how = "measured" if measured_max else f"extrapolated from 0–{top['tasks']}"
        ok_cpu = cpu_x < IDLE_CPU_MAX
        ok_stats = stats_x < STATS_CPU_MAX
        ok_rss = growth <= RSS_PER_TASK_MAX
        rows = []
        for point in idle:
            rows.append(
                [
                    f"{_tasks(point['tasks'])}: CPU",
                    _pct(point["cpu_pct"]),
                    "plugin with no tasks",
                    _pct(base["cpu_pct"]),
                    _pp(point["cpu_pct"] - base["cpu_pct"]),
                    f"one {r.get('window', 30):g} s window",
                    "—",
                    "—",
                ]
            )
        if not measured_max:
            rows.append(
                [
                    f"{TARGET_TASKS} running tasks: CPU ({how}: {cpu_fit[1]:.4f} % per task)",
                    _pct(cpu_at),
                    "plugin with no tasks",
                    _pct(base["cpu_pct"]),
                    _pp(cpu_at - base["cpu_pct"]),
                    "linear fit",
                    f"< {IDLE_CPU_MAX:g} %",
                    _met(ok_cpu),
                ]
            )
        for point in idle[1:]:
            rows.append(
                [
                    f"{_tasks(point['tasks'])} + a 1 s TaskStats stream each: CPU",
                    _pct(point["stats_cpu_pct"]),
                    "same tasks, no TaskStats",
                    _pct(point["cpu_pct"]),
                    _pp(point["stats_cpu_pct"] - point["cpu_pct"]),
                    f"one {r.get('stats_window', 10):g} s window",
                    "—",
                    "—",
                ]
            )
        if not measured_max:
            rows.append(
                [
                    f"{TARGET_TASKS} running tasks + TaskStats: CPU ({how}: "
                    f"{stats_fit[1]:.3f} % per task)",
                    _pct(stats_at),
                    "same tasks, no TaskStats",
                    _pct(cpu_at),
                    _pp(stats_at - cpu_at),
                    "linear fit",
                    f"< {STATS_CPU_MAX:g} %",
                    _met(ok_stats),
                ]
            )
        for point in idle:
            rows.append(
                [
                    f"{_tasks(point['tasks'])}: RSS",
                    fmt_bytes(point["rss"]),
                    "plugin with no tasks",
                    fmt_bytes(base["rss"]),
                    f"{point['rss'] / base['rss']:.2f}×",
                    "—",
                    "—",
                    "—",
                ]
            )
        rows.append(
            [
                f"RSS growth per task, {first['tasks']} → {top['tasks']} tasks",
                f"{fmt_bytes(growth)}/task",
                "—",
                "—",
                "—",
                "—",
                f"≤ {fmt_bytes(RSS_PER_TASK_MAX)}/task",
                _met(ok_rss),
            ]
        )
        self.target(
            "4 idle",
            f"CPU < {IDLE_CPU_MAX:g} % at {TARGET_TASKS} tasks ({how})",
            _pct(cpu_x),
            ok_cpu,
        )
        self.target(
            "4 idle",
            f"CPU < {STATS_CPU_MAX:g} % at {TARGET_TASKS} tasks with TaskStats ({how})",
            _pct(stats_x),
            ok_stats,
        )
        self.target(
            "4 idle",
            f"RSS growth ≤ {fmt_bytes(RSS_PER_TASK_MAX)}/task",
            f"{fmt_bytes(growth)}/task",
            ok_rss,
        )
        self.add(*_table(rows), "")
        self.add(
            f"RSS growth: {fmt_bytes(growth)} per task from {first['tasks']} to {top['tasks']} "
            f"tasks (the first task also loads code once: "
            f"{fmt_bytes(first['rss'] - base['rss'])}"
            + (
                ", asyncssh and cryptography being imported on first SSH use"
                if self._asyncssh_lazy()
                else ""
            )
            + "). "
            f"The TaskStats window ({r.get('stats_window', 10):g} s) comes first, 5 s after "
            f"the last start; the quiet window ({r.get('window', 30):g} s) follows it, so it "
            "starts ~17 s after the last start and spans one fingerprint period (30 s) and "
            "two SSH keepalive periods (15 s). CPU from the threads' `schedstat` (ns), or "
            "`utime+stime` (10 ms ticks) when a thread ended inside the window. Fake Linux "
            "VMs with quiet guests (`log_rate` 0; the default `log stream` command runs, "
            "idle). Each task holds one SSH connection (15 s keepalive) and a pidfd. Counts "
            "measured: " + ", ".join(str(c) for c in counts) + f". {TARGET_TASKS} tasks were "
            "not started: each fake VM is ~7 Python/sshd processes, and starting, settling "
            f"and measuring {TARGET_TASKS} of them on 2 shared cores would take most of the "
            "10-minute budget on its own; the figures grow linearly with the count, so the "
            f"{TARGET_TASKS}-task rows are a least-squares line through the measured points.",
            "",
        )
        if not ok_cpu:
            self.misses.append(
                f"**Idle CPU at {TARGET_TASKS} tasks.** With nothing asking, the plugin's "
                "only periodic work per task is the SSH connection of the task's log stream "
                "(asyncssh `keepalive_interval` = `_guest.ssh.KEEPALIVE_SECONDS`, 60 s): "
                f"{cpu_fit[1]:.4f} % of a core per task here; the fingerprint every 30 s is "
                "in the intercept. What remains is trio-asyncio's own wakeups for each "
                "connection."
            )
        if not ok_stats:
            per = stats_fit[1] - cpu_fit[1]
            self.misses.append(
                "**TaskStats cost.** Nomad's client keeps a TaskStats stream open per task at "
                "its 1 s collection interval. All tasks' samplers share one process-table scan "
                "a second, and a sampler that can reuse it takes no worker-thread hop. What "
                f"remains, {per:.3f} % of a core per task, is mostly that scan and one gRPC "
                "message per task per second (a py-spy profile at 10 tasks: most samples in "
                "`_stats._linux_table` and the disk-holder walk). On Linux the scan reads "
                "`/proc/*/stat` of every process on the host, and each fake VM adds about 7 "
                "processes, so the per-task figure here includes the host growing with the "
                "VMs; on macOS the scan is one `ps` per second however many tasks run. "
                "Further fix: walk only the VMs' process trees (`/proc/<pid>/task/*/children`) "
                "instead of the whole table."
            )

    def latency(self, r: dict[str, Any]) -> None:
        self.add("## 5. Control-plane latency under load", "")
        if "inspect_idle" not in r:
            self.add(f"Failed: `{r.get('error', 'not run')}`", "")
            return
        p50_ok = r["inspect_load_p50"] <= INSPECT_P50_MAX
        p99_ok = r["inspect_load_p99"] <= INSPECT_P99_MAX
        rows = [
            [
                "InspectTask p50, 10 streams at full speed",
                fmt_seconds(r["inspect_load_p50"]),
                "InspectTask p50, streams idle",
                fmt_seconds(r["inspect_idle_p50"]),
                f"{r['inspect_load_p50'] / r['inspect_idle_p50']:.1f}×",
                f"{r['inspect_load']['n']} calls",
                f"≤ {INSPECT_P50_MAX * 1000:.0f} ms",
                self.target(
                    "5 latency",
                    f"InspectTask p50 under load ≤ {INSPECT_P50_MAX * 1000:.0f} ms",
                    fmt_seconds(r["inspect_load_p50"]),
                    p50_ok,
                ),
            ],
            [
                "InspectTask p99, 10 streams at full speed",
                fmt_seconds(r["inspect_load_p99"]),
                "InspectTask p99, streams idle",
                fmt_seconds(r["inspect_idle_p99"]),
                f"{r['inspect_load_p99'] / r['inspect_idle_p99']:.1f}×",
                f"{r['inspect_load']['n']} calls",
                f"≤ {INSPECT_P99_MAX * 1000:.0f} ms",
                self.target(
                    "5 latency",
                    f"InspectTask p99 under load ≤ {INSPECT_P99_MAX * 1000:.0f} ms",
                    fmt_seconds(r["inspect_load_p99"]),
                    p99_ok,
                ),
            ],
        ]
        if r.get("exec_capability") and r["exec_load"].get("n"):
            rows += [
                [
                    "ExecTask (`/bin/true`) p50 / p99, under load",
                    f"{fmt_seconds(r['exec_load_p50'])} / {fmt_seconds(r['exec_load_p99'])}",
                    "ExecTask p50 / p99, streams idle",
                    f"{fmt_seconds(r['exec_idle_p50'])} / {fmt_seconds(r['exec_idle_p99'])}",
                    f"{r['exec_load_p50'] / r['exec_idle_p50']:.1f}× (p50)",
                    f"{r['exec_load']['n']} calls",
                    "context (opens an SSH session)",
                    "—",
                ]
            ]
        self.add(*_table(rows), "")
        rates = r["load_lines_per_s"]
        self.add(
            "Round trip as Nomad's client sees it plus nomadsim's JSON hop (bench → nomadsim "
            "stdin → gRPC → plugin → back), calls one after another to a random task, "
            f"{len(rates.get('values', []))} alternating rounds of idle and loaded calls. "
            f"Aggregate log rate of the ten streams during the loaded rounds: "
            f"{_rate(rates['median'])} (the machine is saturated: 2 cores for ten guests' sshd "
            "and cat, the plugin, and nomadsim's FIFO readers).",
            "",
        )
        if not r.get("exec_capability"):
            self.add(
                "ExecTask: `capabilities.exec` was false when this ran, so only InspectTask "
                "was measured.",
                "",
            )
        if not (p50_ok and p99_ok):
            self.misses.append(
                "**Latency under load.** The plugin is one Python thread, and ten streams at "
                "full speed keep it busy pumping logs (benchmark 3: most of a core for one "
                "stream); grpclib serves InspectTask on the same asyncio loop (inside trio via "
                "trio-asyncio), so a call waits for CPU, which the guests' sshd and cat and the "
                "FIFO readers also want on 2 cores. Yielding to the loop between log chunks "
                "did not change the p50. ExecTask runs on the task's shared SSH connection "
                "(no new login), so under load its time is the guest's sshd and the command "
                "waiting for those same cores. It is an artificial worst case: ten VMs each "
                "logging hundreds of thousands of lines per second. What would help: less CPU "
                "per log line (benchmark 3), or a cap on each task's log rate (beyond a few "
                "thousand lines per second it is noise)."
            )

    def tasks(self, r: dict[str, Any]) -> None:
        self.add("## 6. Start and recovery", "")
        if "error" in r and not r.get("singles"):
            self.add(f"Failed: `{r['error']}`", "")
            return
        singles = r["singles"]
        batch = r.get("batch", [])
        s_over = _stats([x["overhead"] for x in singles])
        s_tart = _stats([x["tart"] for x in singles])
        s_total = _stats([x["total"] for x in singles])
        s_ratio = _stats([x["total"] / x["tart"] for x in singles if x["tart"]])
        b_over = _stats([x["overhead"] for x in batch])
        b_tart = _stats([x["tart"] for x in batch])
        b_total = _stats([x["total"] for x in batch])
        b_ratio = _stats([x["total"] / x["tart"] for x in batch if x["tart"]])
        failures = r.get("batch_failures", [])
        ok1 = s_over["median"] <= START_OVERHEAD_1_MAX
        ok20 = bool(batch) and b_over["median"] <= START_OVERHEAD_20_MAX and not failures
        rc, rs = r.get("recover_concurrent"), r.get("recover_serial")
        ok_rec = (
            rc is not None
            and rc["total_seconds"] <= RECOVER_ALL_MAX
            and rc["states"] == ["RUNNING"]
        )
        rows = [
            [
                "StartTask → RUNNING, 1 task: total",
                fmt_seconds(s_total["median"]),
                "time inside tart + VM boot",
                fmt_seconds(s_tart["median"]),
                _ratio(s_ratio),
                _spread(s_total),
                "—",
                "—",
            ],
            [
                "… overhead beyond tart, 1 task",
                fmt_seconds(s_over["median"]),
                "—",
                "—",
                "—",
                _spread(s_over),
                f"≤ {START_OVERHEAD_1_MAX * 1000:.0f} ms",
                self.target(
                    "6 start",
                    f"StartTask overhead ≤ {START_OVERHEAD_1_MAX * 1000:.0f} ms (1 task)",
                    fmt_seconds(s_over["median"]),
                    ok1,
                ),
            ],
        ]
        if batch:
            rows += [
                [
                    f"StartTask → RUNNING, {len(batch) + len(failures)} concurrent: total per task",
                    fmt_seconds(b_total["median"]),
                    "time inside tart + VM boot",
                    fmt_seconds(b_tart["median"]),
                    _ratio(b_ratio),
                    _spread(b_total),
                    "—",
                    "—",
                ],
                [
                    f"… overhead beyond tart, {len(batch) + len(failures)} concurrent (per task)",
                    fmt_seconds(b_over["median"]),
                    "same, 1 task",
                    fmt_seconds(s_over["median"]),
                    f"{b_over['median'] / s_over['median']:.1f}×" if s_over["median"] else "n/a",
                    _spread(b_over),
                    f"≤ {fmt_seconds(START_OVERHEAD_20_MAX)}, no failures",
                    self.target(
                        "6 start",
                        f"overhead ≤ {fmt_seconds(START_OVERHEAD_20_MAX)} at "
                        f"{len(batch) + len(failures)} concurrent, no failures",
                        f"{fmt_seconds(b_over['median'])}, {len(failures)} failed",
                        ok20,
                    ),
                ],
            ]
        if rc is not None and rs is not None:
            rows += [
                [
                    f"RecoverTask of {rc['tasks']} tasks after SIGKILL, concurrent: total",
                    fmt_seconds(rc["total_seconds"]),
                    "one RecoverTask (serial, median)",
                    fmt_seconds(rs["per_call"]["median"]),
                    f"{rc['total_seconds'] / rs['per_call']['median']:.1f}×",
                    _spread(rc["per_call"]) + " per call",
                    f"≤ {RECOVER_ALL_MAX:g} s, all RUNNING",
                    self.target(
                        "6 recovery",
                        f"RecoverTask of {rc['tasks']} ≤ {RECOVER_ALL_MAX:g} s",
                        fmt_seconds(rc["total_seconds"]),
                        ok_rec,
                    ),
                ],
                [
                    "plugin relaunch after SIGKILL (launch + SetConfig)",
                    fmt_seconds(rc["relaunch_seconds"]),
                    "—",
                    "—",
                    "—",
                    f"second relaunch {fmt_seconds(rs['relaunch_seconds'])}",
                    "—",
                    "—",
                ],
            ]
        self.add(*_table(rows), "")
        self.add(
            "Fake tart with zero boot delays; the image is pulled once beforehand, so each "
            "start is `tart list`, `clone`, `set`, the VM supervisor, `run`, `ip --wait`, the "
            "SSH login. Every tart call goes through a bash wrapper that logs its start and end "
            "(`$EPOCHREALTIME`, no fork); the VM's boot is `tart run` start until the fake "
            "reports it booted and its IP visible. Overhead = StartTask wall time minus the "
            "union of those intervals: the plugin's own work (config decode, starting the "
            "`nomad-driver-tart supervise` process, SSH key exchange and login, the gaps "
            "between commands).",
            "",
        )
        if batch:
            self.add(
                f"Concurrent batch: wall {fmt_seconds(r['batch_wall'])} for all "
                f"{len(batch) + len(failures)}; union of all tart and boot intervals in that "
                f"window {fmt_seconds(r['batch_tart_union'])}. The driver's launch section "
                "(`tart get` → `tart run`, under its launch lock): "
                f"{fmt_seconds(_med(_finite(x.get('launch_section') for x in singles)))} alone, "
                f"{fmt_seconds(_med(_finite(x.get('launch_section') for x in batch)))} per task "
                f"in the batch ({fmt_seconds(sum(_finite(x.get('launch_section') for x in batch)))}"
                " summed); `tart clone` + `tart set` (under its provisioning lock): "
                f"{fmt_seconds(_med(_finite(x.get('provision') for x in singles)))} alone, "
                f"{fmt_seconds(sum(_finite(x.get('provision') for x in batch)))} summed over "
                "the batch. Plugin CPU per start: "
                f"{fmt_seconds(r.get('single_plugin_cpu', float('nan')))} alone, "
                f"{fmt_seconds(r.get('batch_plugin_cpu', float('nan')))} in the batch. "
                "Recovered tasks' states: " + (", ".join(rc["states"]) if rc else "n/a") + ".",
                "",
            )
        if failures:
            kinds: dict[str, str] = {}  # what tart said (first 30 chars) -> one full error
            for text in failures:
                said = re.split(r"failed with exit code \d+:", text, maxsplit=1)[-1]
                kinds.setdefault(said.strip()[:30], text.split("desc = ", 1)[-1][:400])
            self.add(
                f"**{len(failures)} of {len(batch) + len(failures)} concurrent starts failed** "
                "(restarted one by one afterwards, as Nomad's restart policy would). Errors: "
                + "; ".join(f"`{k}`" for k in list(kinds.values())[:3]),
                "",
            )
            self.misses.append(
                "**Concurrent starts fail.** Two races inside Tart itself, which the fake "
                "reproduces: (1) `tart clone` reads every local VM's `config.json` to check for "
                "a MAC clash, under Tart's global lock, while `tart set` of another task's VM "
                "rewrites its `config.json` in place (truncate + write) without that lock, so "
                "the clone can read half a file (`dataCorrupted`, not valid JSON); (2) every "
                "tart command but `pull`/`clone` first garbage-collects `$TART_HOME/tmp`, and "
                "a clone's staging directory is created before it is locked, so another "
                "task's `tart set`/`ip`/`list` can delete it under the clone "
                "(`FileNotFoundError` on `tmp/<uuid>`). Real Tart has both windows. Fix in the "
                "driver: retry `tart clone` (after deleting a partial VM) when it fails with "
                "either error, and serialise the tart calls of the provisioning phase "
                "(`clone`, `set`) behind one `trio.Lock` per `TART_HOME`; they take tens of "
                "milliseconds, boots and SSH logins still overlap."
            )
        if not ok1 or (batch and b_over["median"] > START_OVERHEAD_20_MAX):
            launch_b = _finite(x.get("launch_section") for x in batch)
            launch_s = _finite(x.get("launch_section") for x in singles)
            prov_b = _finite(x.get("provision") for x in batch)
            self.misses.append(
                "**Start overhead under concurrency.** One start costs the plugin about "
                f"{fmt_seconds(r.get('single_plugin_cpu', float('nan')))} of its own CPU "
                f"({fmt_seconds(r.get('batch_plugin_cpu', float('nan')))} per start in the "
                "batch), so the plugin's thread is not the bottleneck: the starts queue at "
                "the driver's provisioning lock (each `tart clone` and `tart set`, there "
                "because of Tart's own races), held "
                f"{fmt_seconds(sum(prov_b))} summed over the batch. The launch section (`tart "
                "get` until the VM supervisor has started `tart run`; under the launch lock "
                f"only for macOS guests) took {fmt_seconds(_med(launch_s))} per task alone "
                f"and {fmt_seconds(_med(launch_b))} in the batch, the difference being 2 "
                "cores shared by every fake VM's processes. A task waiting for the lock counts "
                "as overhead here (the time is inside another task's tart command). Tart "
                "itself serialises clones with a lock on `TART_HOME`, so on a Mac the queue is "
                "there with or without the driver's lock; 20 VMs starting at once on one host "
                "are also beyond what a Mac runs."
            )

    def command(self, r: dict[str, Any]) -> None:
        self.add("## 8. CI command overheads", "")
        if "start" not in r:
            self.add(f"Failed: `{r.get('error', 'not run')}`", "")
            return
        rows = [
            [
                "guest answers SSH (the plugin's \"VM reachable\") → the command's first line",
                fmt_seconds(r["start"]["median"]),
                "OpenSSH `ssh guest cmd`: client start → the command's first line",
                fmt_seconds(r["openssh_start"]["median"]),
                _ratio(r["start_ratio"]),
                _spread(r["start"]),
                "context",
                self.target(
                    "8 command",
                    "SSH answers → command started (vs an OpenSSH login + exec)",
                    f"{fmt_seconds(r['start']['median'])} ({r['start_ratio']['median']:.2f}×)",
                    None,
                ),
            ],
            [
                "the command's last line → WaitTask answers",
                fmt_seconds(r["end"]["median"]),
                "OpenSSH `ssh guest cmd`: the command's last line → client exits",
                fmt_seconds(r["openssh_end"]["median"]),
                _ratio(r["end_ratio"]),
                _spread(r["end"]),
                "context",
                self.target(
                    "8 command",
                    "command exited → task exited (vs OpenSSH seeing the exit)",
                    f"{fmt_seconds(r['end']['median'])} ({r['end_ratio']['median']:.2f}×)",
                    None,
                ),
            ],
        ]
        self.add(
            *_table(rows),
            "",
            f"{r['start']['n']} tasks with `command` on fake macOS VMs (quiet guests), "
            "alternating with OpenSSH runs on a VM of their own. The command records "
            "`date +%s.%N` as its first and last lines, a second apart; the fake's guests "
            "share the host's clock. Start: the plugin logs in again to start the runner "
            "(the login that found the guest reachable is closed by then), sends the "
            "environment and reads the runner's pid. End: the runner appends the exit "
            "status to its status file, `tail -f` in the plugin's waiting session sends it, "
            "the followers reach the output's final size, the sinks are drained, the task "
            "finishes; WaitTask's "
            "answer then crosses nomadsim.",
            "",
        )

    def hostile(self, r: dict[str, Any]) -> None:
        self.add("## 9. A hostile guest beside ordinary tasks", "")
        if "attacked" not in r:
            self.add(f"Failed: `{r.get('error', 'not run')}`", "")
            return
        a, q = r["attacked"], r["quiet"]
        rows = [
            [
                f"InspectTask p99 while one guest attacks, {r['tasks']} other tasks",
                fmt_seconds(a["p99"]),
                "InspectTask p99, the same tasks, no attacker",
                fmt_seconds(q["p99"]),
                f"{a['p99'] / q['p99']:.1f}×",
                f"{a['n']} calls",
                f"≤ {ATTACK_P99_MAX:g} s",
                self.target(
                    "9 hostile guest",
                    f"InspectTask p99 while one guest attacks ≤ {ATTACK_P99_MAX:g} s",
                    fmt_seconds(a["p99"]),
                    a["p99"] <= ATTACK_P99_MAX,
                ),
            ],
            [
                "InspectTask p50 while one guest attacks",
                fmt_seconds(a["median"]),
                "InspectTask p50, no attacker",
                fmt_seconds(q["median"]),
                f"{a['median'] / q['median']:.1f}×",
                f"{a['n']} calls",
                "context",
                "—",
            ],
        ]
        self.add(
            *_table(rows),
            "",
            f"{r['tasks']} Linux VMs streaming guest logs (20 lines/s each). In the attack "
            "phase one more task runs a command that appends, without end, 8 MiB of line "
            "breaks and then 4 MiB without one to its own status file, while it prints 1 GiB "
            "without a line break with `guest_logs = true`. InspectTask is called on the "
            "ordinary tasks in turn, one call at a time, in phases that alternate with and "
            "without the attacker.",
            "",
        )

    def ports(self, r: dict[str, Any]) -> None:
        self.add("## 10. A forwarded port against a direct connection to the guest", "")
        if "throughput_ratio" not in r:
            self.add(f"Failed: `{r.get('error', 'not run')}`", "")
            return
        ratio = r["throughput_ratio"]["median"]
        added = r["added_rtt"]["median"]
        idle = r["idle_cpu_forward"]
        if ratio < PORT_THROUGHPUT_MIN and "forward_cpu_share" in r:
            self.misses.append(
                "**Forwarded throughput.** Through the forward every byte is copied into and "
                "out of the kernel twice more (the forward receives and sends it), and a third "
                "busy process shares the machine's two cores with the client and the guest's "
                f"service: the forward kept {r['forward_cpu_share']:.0%} of one core busy "
                f"while it carried {r['forward_mib_s']:.0f} MiB/s, against "
                f"{r['direct_mib_s']:.0f} MiB/s straight over loopback to a fake guest. On two "
                "cores the three processes cannot all run at once, so the forwarded rate is "
                "bounded near half the direct one whatever the forward is written in; the "
                "research's 2c measurement reached parity only with endpoints that were "
                "slower than loopback. A Mac has cores to spare, and its direct path crosses "
                "vmnet's bridge, not loopback; whether the forward keeps up there is for a Mac "
                "run of this bench to show. In-kernel forwarding (a pf `rdr` anchor) would "
                "remove the copies but not serve connections from the Mac itself."
            )
        rows = [
            [
                f"TCP throughput through the forward ({r['bulk_mib']:.0f} MiB)",
                f"{r['forward_mib_s']:.0f} MiB/s",
                "the same, straight to the guest's address",
                f"{r['direct_mib_s']:.0f} MiB/s",
                _ratio(r["throughput_ratio"]),
                f"{r['runs']} runs",
                f"≥ {PORT_THROUGHPUT_MIN:.0%}",
                self.target(
                    "10 ports",
                    f"forwarded throughput ≥ {PORT_THROUGHPUT_MIN:.0%} of direct",
                    f"{ratio:.0%}",
                    ratio >= PORT_THROUGHPUT_MIN,
                ),
            ],
            [
                f"One-byte round trip, p50 of {r['round_trips']:,}, through the forward",
                fmt_seconds(r["forward_rtt"]["median"]),
                "the same, straight to the guest's address",
                fmt_seconds(r["direct_rtt"]["median"]),
                f"+{added * 1e6:.0f} µs",
                _spread(r["added_rtt"]),
                f"≤ +{PORT_ADDED_P50_MAX * 1e6:.0f} µs",
                self.target(
                    "10 ports",
                    f"round trip p50 + ≤ {PORT_ADDED_P50_MAX * 1e3:g} ms",
                    f"+{added * 1e3:.3f} ms",
                    added <= PORT_ADDED_P50_MAX,
                ),
            ],
            [
                f"VM supervisor CPU over {r['idle_seconds']:.0f} s, forward listening, one "
                "idle connection",
                fmt_seconds(idle),
                "a VM supervisor without ports, same window",
                fmt_seconds(r["idle_cpu_plain"]),
                "—",
                "one window",
                f"≤ {PORT_IDLE_CPU_MAX * 1e3:g} ms",
                self.target(
                    "10 ports",
                    f"an idle forward: ≤ {PORT_IDLE_CPU_MAX * 1e3:g} ms CPU in "
                    f"{r['idle_seconds']:.0f} s",
                    fmt_seconds(idle),
                    idle <= PORT_IDLE_CPU_MAX,
                ),
            ],
        ]
        self.add(
            *_table(rows),
            "",
            "One Linux VM serves a sink (the byte count back after the client half-closes) "
            "and a one-byte echo on its own address. The bench process is the client, "
            "alternating run by run between the guest's address (what the Mac itself can "
            "reach) and the node's address with the port Nomad allocated, which the VM's "
            "supervisor forwards (asyncio Protocols in a thread of its own). Three busy "
            "processes (client, forward, guest service) share the machine's two cores in the "
            "forwarded runs, two in the direct ones. Idle CPU is the supervisor's own "
            "(every thread), read from the kernel's per-thread counters.",
            "",
        )

    def warm(self, r: dict[str, Any]) -> None:
        self.add("## 11. Warm StartTask against cold StartTask", "")
        if "overhead_ratio" not in r:
            self.add(f"Failed: `{r.get('error', 'not run')}`", "")
            return
        rows = [
            [
                "StartTask, warm (a suspended clone resumed)",
                fmt_seconds(r["warm_total"]["median"]),
                "StartTask, cold (clone, set, boot), same job",
                fmt_seconds(r["cold_total"]["median"]),
                _ratio(r["total_ratio"]),
                _spread(r["warm_total"]),
                "context (the fake's modelled times)",
                "—",
            ],
            [
                "of which the driver's own overhead, warm",
                fmt_seconds(r["warm_overhead"]["median"]),
                "the driver's own overhead, cold",
                fmt_seconds(r["cold_overhead"]["median"]),
                _ratio(r["overhead_ratio"]),
                _spread(r["warm_overhead"]),
                "context",
                "—",
            ],
        ]
        self.add(
            *_table(rows),
            "",
            f"{r['runs']} runs of each, alternating; {r['hits']} of the {r['runs']} warm runs "
            "resumed (the others booted cold and say why in their events). A command task on "
            "the fake's macOS image, 4 cores, 4 GB, against a warm pool of one slot whose "
            "golden is ready before each warm run. The time inside `tart` and the VM (every "
            "`tart` call naming the task's VM, and `tart run` until the guest is up: booted, "
            "or resumed) is the fake's; the rest is the driver's: the slot's links, "
            "the checks over SSH (the golden's host key, the mount and the nonce, the clock "
            "step) and the command's launch on the warm path; the image check, the "
            "supervisor's launch and the SSH wait on the cold one.",
            "",
        )

    def suite(self) -> None:
        """The test suite's time, from ``bench/suite-times.json`` (measured, not run here:
        the suite takes minutes, and its "before" is another commit)."""
        path = Path(__file__).resolve().parent / "suite-times.json"
        if not path.exists():
            return
        runs = json.loads(path.read_text())
        self.add("## 12. The test suite", "")
        rows = [
            [
                f"`{r['command']}` at `{r['commit']}` ({r['label']})",
                f"{r['total_seconds'] / 60:.1f} min",
                f"pytest {r['pytest_seconds']:.0f} s, {r['tests']} tests, {r['workers']}",
                r["date"],
            ]
            for r in runs
        ]
        self.add(
            "| Run | Whole command | Of which | Measured |",
            "|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
            "Measured on this machine (2 cores), each from a fresh clone: the whole command's "
            "wall time, which includes making the virtualenv from the lock with pip's cache "
            "warm (about 25 s), lint and typecheck. Recorded in `bench/suite-times.json`.",
            "",
        )

    # ---- whole document ---------------------------------------------------------------------

    def fingerprint(self, r: dict[str, Any]) -> None:
        self.add("## 7. Fingerprint with a full image cache", "")
        if "error" in r:
            self.add(f"Failed: `{r['error']}`", "")
            return
        n = r["images"]
        ratio = r["ratio"]["median"]
        rows = [
            [
                f"Fingerprint, {n} cached images (first report of a new stream)",
                fmt_seconds(r["fingerprint_full"]["median"]),
                "the same, empty cache",
                fmt_seconds(r["fingerprint_empty"]["median"]),
                _ratio(r["ratio"]),
                _spread(r["fingerprint_full"]),
                f"≤ {FINGERPRINT_CACHE_RATIO_MAX:g}×",
                self.target(
                    "7 fingerprint",
                    f"{n} cached images ≤ {FINGERPRINT_CACHE_RATIO_MAX:g}× an empty cache",
                    f"{ratio:.2f}×",
                    ratio <= FINGERPRINT_CACHE_RATIO_MAX,
                ),
            ],
            [
                f"of which the cache attributes (`tart list --source oci`, `statvfs`), {n} images",
                fmt_seconds(r["cache_part_full"]["median"]),
                "the same, empty cache",
                fmt_seconds(r["cache_part_empty"]["median"]),
                "—",
                _spread(r["cache_part_full"]),
                "context",
                "—",
            ],
        ]
        self.add(*_table(rows), "")
        self.add(
            f"{n} images pulled into the fake's cache (a tag and a digest each, "
            f"{r['listed_tags']} tags listed); the two attributes that list them hold "
            f"{r['attribute_bytes']:,} characters. Two plugin instances under nomadsim, one "
            "per `tart_home`, asked in alternating runs; opening the Fingerprint stream makes "
            "the plugin probe tart and send its first report, timed to that message. The cache "
            "attributes add one `tart list --source oci` to the fingerprint's other `tart` "
            "calls (`--version`, the local VM list); each call starts the fake, a Python "
            "program, where Tart is a native binary. The size of the listing adds little.",
            "",
        )

    def render(self) -> str:
        doc = self.doc
        res = doc["results"]
        body_start = len(self.lines)
        if "startup" in res:
            self.startup(res["startup"])
        if "decode" in res:
            self.decode(res["decode"])
        if "logs" in res:
            self.logs(res["logs"])
        if "tasks" in res:
            self.idle(res["tasks"])
        if "logs" in res:
            self.latency(res["logs"])
        if "tasks" in res:
            self.tasks(res["tasks"])
        if "fingerprint" in res:
            self.fingerprint(res["fingerprint"])
        if "command" in res:
            self.command(res["command"])
        if "hostile" in res:
            self.hostile(res["hostile"])
        if "ports" in res:
            self.ports(res["ports"])
        if "warm" in res:
            self.warm(res["warm"])
        self.suite()
        body = self.lines[body_start:]
        m = doc["machine"]
        head = [
            "# Benchmarks",
            "",
            "Generated by `nox -s bench` (`python -m bench`); do not edit by hand. Every figure "
            "is measured against a baseline in the same run and reported as a ratio: medians "
            "of several runs, spread = half the min–max range relative to the median. Nothing "
            "here is asserted: the bench reports, it never fails on a number.",
            "",
            f"Run: {doc['date']} on {doc.get('code', 'unknown code')}; "
            f"{doc['total_seconds'] / 60:.1f} min in total"
            + (" (--quick)" if doc.get("quick") else "")
            + ". Durations: "
            + ", ".join(f"{k} {v.get('duration', 0):.0f} s" for k, v in res.items())
            + ".",
            "",
            "## Machine",
            "",
            "| | |",
            "|---|---|",
            f"| CPU | {m['cpu']} |",
            f"| Cores | {m['cores']} |",
            f"| RAM | {m['ram']} |",
            f"| OS | {m['os']} |",
            f"| Virtualised | {m['virtualised']} |",
            f"| Python | {m['python']} |",
            f"| Go | {m['go']} |",
            f"| OpenSSH | {m['openssh']} |",
            "| Libraries | " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + " |",
            f"| Other load | {doc['busy_before']:.0%} of all CPUs busy in the second before "
            f"the run, {doc['busy_after']:.0%} after (the machine is shared with other work) |",
            "",
            "Absolute times depend on this machine and its neighbours; the ratios are the "
            "figures to compare across machines.",
            "",
            "## Targets",
            "",
            "| Benchmark | Target | Figure | Met? |",
            "|---|---|---|---|",
        ]
        head += [f"| {b} | {t} | {f} | {_met(ok)} |" for b, t, f, ok in self.summary]
        head.append("")
        tail = ["## What misses its target, why, and what would fix it", ""]
        tail += [f"- {m}" for m in self.misses] or ["Everything met its target."]
        tail.append("")
        tail += [
            "## Method",
            "",
            "- Harness: `bench/` (`python -m bench [--only startup,decode,tasks,logs,fingerprint,"
            "command,hostile,ports,warm] "
            "[--quick]`). It drives the real plugin executable through nomadsim (the Go "
            "Nomad-client stand-in on Debian's go-plugin 1.0.1) against the fake `tart` with "
            "real SSH guests (`docs/nomad-standin.md`, `docs/fake-tart.md`). Raw numbers: "
            "`build/bench-results.json`.",
            "- Baselines: `bench/goplugin/main.go` (a go-plugin server with Nomad's handshake "
            "and no services of its own, built offline in GOPATH mode like nomadsim by "
            "`bench/gobuild.py`), `bench/handvalidate.py` (builtins decode + hand validation), "
            "OpenSSH's `ssh` client, and the plugin itself with no tasks / no load.",
            "- Cleanup: every VM, guest, supervisor and plugin started lives under one "
            "`$TMPDIR/tart-bench-*` directory and `TART_HOME`; teardown runs on errors and "
            "SIGTERM, and the next run sweeps what a killed run left behind.",
            "",
        ]
        return "\n".join(head + body + tail)


def render(doc: dict[str, Any]) -> str:
    return Report(doc).render()
