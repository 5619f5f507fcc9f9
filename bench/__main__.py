"""``python -m bench``: run every benchmark, write BENCHMARKS.md and build/bench-results.json.

Options: ``--only startup,decode,tasks,logs,fingerprint,command,hostile,ports,warm``
and ``--quick`` (fewer runs, for trying the harness) write ``build/BENCHMARKS.partial.md`` and
``build/bench-results.partial.json`` instead, so they never replace the full report;
``--output PATH`` chooses the Markdown file.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from bench import command, decode, fingerprint, hostile, logs, ports, report, startup, tasks, warm
from bench.rig import sweep_stale
from bench.util import busy_fraction, machine, versions

REPO = Path(__file__).resolve().parent.parent
ALL = (
    "startup",
    "decode",
    "tasks",
    "logs",
    "fingerprint",
    "command",
    "hostile",
    "ports",
    "warm",
)


def _params(quick: bool) -> dict[str, dict[str, Any]]:
    if quick:
        return {
            "startup": {"runs": 3},
            "decode": {"runs": 3},
            "tasks": {"singles": 3, "batch": 4, "window": 3.0, "stats_window": 3.0},
            "logs": {"runs": 2, "tasks": 3, "rounds": 1, "calls": 30, "exec_calls": 3},
            "fingerprint": {"runs": 3, "images": 50},
            "command": {"runs": 2},
            "hostile": {"tasks": 3, "rounds": 1, "calls": 30},
            "ports": {"runs": 2},
            "warm": {"runs": 2},
        }
    return {
        "startup": {"runs": 7},
        "decode": {"runs": 7},
        "tasks": {"singles": 10, "batch": 20, "window": 30.0, "stats_window": 10.0},
        "logs": {"runs": 5, "tasks": 10, "rounds": 3, "calls": 100, "exec_calls": 5},
        "fingerprint": {"runs": 15, "images": 50},
        "command": {"runs": 7},
        "hostile": {"tasks": 10, "rounds": 3, "calls": 200},
        "ports": {"runs": 7},
        "warm": {"runs": 5},
    }


async def _run_all(names: list[str], params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    modules = {
        "startup": startup,
        "decode": decode,
        "tasks": tasks,
        "logs": logs,
        "fingerprint": fingerprint,
        "command": command,
        "hostile": hostile,
        "ports": ports,
        "warm": warm,
    }
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    print(f"bench: signal {signum}, cleaning up", file=sys.stderr)
                    nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signal)
        for name in names:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                results[name] = await modules[name].run(**params[name])
            except Exception as exc:  # keep going: the report says what failed
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            results[name]["duration"] = time.monotonic() - t0
            print(
                f"bench: {name} done in {results[name]['duration']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        nursery.cancel_scope.cancel()
    return results


def code_state() -> str:
    """The commit measured, and whether the working tree differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tart_trio"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
    except OSError:
        return "unknown"
    if not dirty:
        return f"commit {head}"
    files = "1 file" if len(dirty) == 1 else f"{len(dirty)} files"
    return f"commit {head} plus uncommitted changes to {files} of tart_trio/"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", default=",".join(ALL))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    output = args.output or (
        REPO / "BENCHMARKS.md"
        if set(names) == set(ALL) and not args.quick
        else REPO / "build" / "BENCHMARKS.partial.md"
    )
    started = time.monotonic()
    for note in sweep_stale():
        print(f"bench: {note}", file=sys.stderr)
    doc: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "quick": args.quick,
        "busy_before": busy_fraction(1.0),
        "code": code_state(),
    }
    doc["results"] = trio.run(_run_all, names, _params(args.quick))
    doc["busy_after"] = busy_fraction(1.0)
    doc["total_seconds"] = time.monotonic() - started
    (REPO / "build").mkdir(exist_ok=True)
    full = output == REPO / "BENCHMARKS.md"
    raw = REPO / "build" / ("bench-results.json" if full else "bench-results.partial.json")
    raw.write_text(json.dumps(doc, indent=1, default=str))
    output.write_text(report.render(doc))
    print(f"bench: wrote {output} in {doc['total_seconds']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
