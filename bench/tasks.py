"""Benchmarks 4 and 6: StartTask overhead, idle cost with N tasks, RecoverTask after SIGKILL.

One plugin under nomadsim, fake Linux VMs with quiet guests (``log_rate`` 0, zero boot
delays). The task count only grows, so one set of VMs serves every figure:

    idle(0) -> single starts, one after the other (idle(1) after the first) -> idle(10)
    -> a batch of 20 concurrent starts -> idle(30) -> SIGKILL the plugin, relaunch,
    RecoverTask of all 30 concurrently (as Nomad's task runners do) -> SIGKILL again,
    relaunch, RecoverTask one by one (the single-task baseline) -> destroy everything.

Idle windows are measured twice: with nothing asking (the plugin's own cost), and with
Nomad's per-task TaskStats stream at its default 1 s collection interval open for every
task (what a Nomad client really costs the driver).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import trio

from bench.rig import Rig, TartCall, job_hcl, open_rig, union_length
from bench.util import CpuMeter, Sample, rss_bytes, threads
from tests.conformance.nomadsim import NomadSimError
from tests.faketart.fixtures import LINUX_IMAGE

IDLE_WINDOW = 30.0
STATS_WINDOW = 10.0
SETTLE = 5.0


def start_accounting(rig: Rig, started: dict[str, Any], calls: list[TartCall]) -> dict[str, float]:
    """StartTask wall time split into time inside tart (and the VM's boot) and the rest."""
    vm = started["vm"]
    lo, hi = started["t_send"], started["t_reply"]
    intervals: list[tuple[float, float]] = []
    for call in calls:
        if call.end is None:
            continue
        if vm in call.argv or call.argv[:1] in (("list",), ("pull",)):
            intervals.append((call.start, call.end))
    boot = rig.boot_window(vm)
    if boot is not None:
        intervals.append(boot)
    inside = union_length(intervals, lo, hi)
    # tart get (the macOS slot check) .. tart run: the part under the driver's launch lock
    gets = [c.start for c in calls if c.argv[:2] == ("get", vm)]
    runs = [c.start for c in calls if c.argv[:2] == ("run", vm)]
    launch = runs[-1] - gets[0] if gets and runs else float("nan")
    # clone and set: the calls the driver serialises behind its provisioning lock
    provision = sum(
        c.end - c.start
        for c in calls
        if c.end is not None and c.argv[:1] in (("clone",), ("set",)) and vm in c.argv
    )
    return {
        "total": hi - lo,
        "tart": inside,
        "overhead": hi - lo - inside,
        "boot_known": boot is not None,
        "launch_section": launch,
        "provision": provision,
    }


def plugin_pid(rig: Rig) -> int:
    assert rig.plugin_pid is not None
    return rig.plugin_pid


async def idle_point(
    rig: Rig, task_ids: list[str], window: float, stats_window: float
) -> dict[str, Any]:
    """Plugin CPU % with a 1 s TaskStats stream per task, then with nothing asking; RSS.

    The quiet window comes second, so it starts well after the last StartTask (a burst of
    starts leaves some seconds of connection set-up behind), and it spans one whole
    fingerprint period (30 s) and two SSH keepalive periods (15 s): an unbiased average.
    """
    pid = plugin_pid(rig)
    await trio.sleep(SETTLE)
    point: dict[str, Any] = {"tasks": len(task_ids)}
    if task_ids:
        streams = [
            await rig.sim.open_stream("task_stats", task_id=t, interval_seconds=1) for t in task_ids
        ]
        await trio.sleep(1.5)
        meter = CpuMeter(pid)
        await trio.sleep(stats_window)
        loaded = meter.read()
        for stream in streams:
            with contextlib.suppress(Exception):
                await rig.sim.close_stream(stream)
        point["stats_cpu_pct"] = 100 * loaded["cpu"] / loaded["wall"]
        point["stats_rss"] = rss_bytes(pid)
    meter = CpuMeter(pid)
    await trio.sleep(window)
    quiet = meter.read()
    point["cpu_pct"] = 100 * quiet["cpu"] / quiet["wall"]
    point["children_cpu_pct"] = 100 * quiet["children_cpu"] / quiet["wall"]
    point["rss"] = rss_bytes(pid)
    point["threads"] = threads(pid)
    if not task_ids:
        point["stats_cpu_pct"] = point["cpu_pct"]
        point["stats_rss"] = point["rss"]
    return point


async def recover_all(
    rig: Rig, handles: list[dict[str, Any]], *, concurrent: bool
) -> dict[str, Any]:
    """SIGKILL the plugin, launch it again, RecoverTask every handle; check they run."""
    await rig.sim.call("sigkill")
    t0 = time.monotonic()
    await rig.launch(log_name=f"plugin-{time.monotonic_ns()}.log")
    relaunch = time.monotonic() - t0
    per_call = Sample()

    async def one(handle: dict[str, Any]) -> None:
        t = time.monotonic()
        await rig.sim.call("recover_task", handle=handle)
        per_call.add(time.monotonic() - t)

    t1 = time.monotonic()
    if concurrent:
        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(one, handle)
    else:
        for handle in handles:
            await one(handle)
    total = time.monotonic() - t1
    phases = [
        (await rig.sim.call("inspect_task", task_id=h["config"]["id"]))["task"]["state"]
        for h in handles
    ]
    return {
        "tasks": len(handles),
        "concurrent": concurrent,
        "relaunch_seconds": relaunch,
        "total_seconds": total,
        "per_call": per_call.as_dict(),
        "states": sorted(set(phases)),
    }


async def run(
    *,
    singles: int = 10,
    batch: int = 20,
    window: float = IDLE_WINDOW,
    stats_window: float = STATS_WINDOW,
) -> dict[str, Any]:
    """All figures of benchmarks 4 and 6 (see the module docstring)."""
    out: dict[str, Any] = {
        "idle": [],
        "singles": [],
        "batch": [],
        "window": window,
        "stats_window": stats_window,
    }
    async with open_rig("tasks") as rig:
        rig.fake.set_knobs("*", log_rate=0)
        # Pull once, so every start clones from the cache (the figure is the driver, not pulls).
        await trio.to_thread.run_sync(lambda: rig.fake.tart("pull", LINUX_IMAGE, check=True))
        await rig.launch()
        events = await rig.sim.open_stream("task_events")  # as Nomad: always subscribed
        fingerprint = await rig.sim.open_stream("fingerprint")
        await fingerprint.receive()
        job = job_hcl()
        started: list[dict[str, Any]] = []
        try:
            out["idle"].append(await idle_point(rig, [], window, stats_window))
            single_cpu = 0.0
            for i in range(singles):
                meter = CpuMeter(plugin_pid(rig))
                started.append(await rig.start(job))
                single_cpu += meter.read()["cpu"]
                if i == 0:
                    out["idle"].append(
                        await idle_point(rig, [s["task_id"] for s in started], window, stats_window)
                    )
            out["single_plugin_cpu"] = single_cpu / singles
            calls = rig.tart_calls()
            out["singles"] = [start_accounting(rig, s, calls) for s in started]
            out["idle"].append(
                await idle_point(rig, [s["task_id"] for s in started], window, stats_window)
            )

            batch_started: list[dict[str, Any]] = []
            failures: list[str] = []
            t0 = time.monotonic()
            meter = CpuMeter(plugin_pid(rig))
            async with trio.open_nursery() as nursery:

                async def start_one() -> None:
                    try:
                        batch_started.append(await rig.start(job))
                    except NomadSimError as exc:
                        failures.append(exc.message)

                for _ in range(batch):
                    nursery.start_soon(start_one)
            out["batch_wall"] = time.monotonic() - t0
            out["batch_plugin_cpu"] = meter.read()["cpu"] / batch
            out["batch_failures"] = failures
            calls = rig.tart_calls()
            out["batch"] = [start_accounting(rig, s, calls) for s in batch_started]
            lo = min(s["t_send"] for s in batch_started)
            hi = max(s["t_reply"] for s in batch_started)
            spans = [(c.start, c.end) for c in calls if c.end is not None]
            spans += [w for s in batch_started if (w := rig.boot_window(s["vm"])) is not None]
            out["batch_tart_union"] = union_length(spans, lo, hi)
            started += batch_started
            for _ in failures:  # Nomad would restart them; keep the task count comparable
                started.append(await rig.start(job))
            out["idle"].append(
                await idle_point(rig, [s["task_id"] for s in started], window, stats_window)
            )

            handles = [s["handle"] for s in started]
            out["recover_concurrent"] = await recover_all(rig, handles, concurrent=True)
            await trio.sleep(2)
            out["recover_serial"] = await recover_all(rig, handles, concurrent=False)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(90):
                await rig.destroy_all([s["task_id"] for s in started])
            del events
    return out
