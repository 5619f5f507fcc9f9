"""Benchmark 11: a warm StartTask (a suspended clone resumed) against a cold one.

One warm pool of one slot on the fake; the same command job with ``warm_start`` true and
false, alternating run by run. Each StartTask's wall time is split, as in benchmark 4, into
the time inside ``tart`` and the VM (the calls naming the task's VM; for the VM, from
``tart run`` until the fake's guest is up: booted, or resumed) and the rest, the driver's
own overhead. The fake's modelled boot and resume times are not claims about a Mac: the
figures to read are each path's overhead, and their ratio.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import trio

from bench.rig import PASSWORD, Rig, TartCall, open_rig, union_length
from bench.util import Sample, paired_ratios
from tests.faketart.fixtures import MACOS_IMAGE

SCRIPT = 'echo "built in $(pwd)"'


def job(*, warm: bool) -> str:
    return (
        'job "bench-warm" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
        f'      config {{\n        url = "{MACOS_IMAGE}"\n        ssh_user = "admin"\n'
        f'        ssh_password = "{PASSWORD}"\n        command = "/bin/sh"\n'
        f'        args = ["-c", "{SCRIPT.replace(chr(34), chr(92) + chr(34))}"]\n'
        f"        warm_start = {str(warm).lower()}\n      }}\n    }}\n  }}\n}}\n"
    )


def plugin_hcl(rig: Rig) -> str:
    pool = (
        f'    warm_dir = "{rig.root / "warm"}"\n'
        f'    warm_pool {{\n      name = "bench"\n      image = "{MACOS_IMAGE}"\n'
        "      cores = 4\n      memory = 4096\n    }\n"
    )
    return rig.plugin_hcl().replace("  config {\n", "  config {\n" + pool, 1)


async def start(rig: Rig, *, warm: bool) -> dict[str, Any]:
    alloc = str(uuid.uuid4())
    task = {
        "alloc_id": alloc,
        "alloc_dir": str(rig.allocs / alloc),
        "env": {},
        "resources": {"cpu_shares": 4000, "memory_mb": 4096, "cpuset_cpus": "0,1,2,3"},
    }
    t_send = time.time()
    started: dict[str, Any] = await rig.sim.call(
        "start_task", task=task, job_hcl=job(warm=warm), create_alloc_dir=True
    )
    started.update(t_send=t_send, t_reply=time.time(), vm=f"nomad-{alloc}")
    return started


def accounting(rig: Rig, started: dict[str, Any], calls: list[TartCall]) -> dict[str, float]:
    vm = started["vm"]
    lo, hi = started["t_send"], started["t_reply"]
    intervals = [(c.start, c.end) for c in calls if c.end is not None and vm in c.argv]
    runtime = rig.fake.runtime(vm)
    up = runtime.get("ip_visible_at") or runtime.get("booted_at")
    runs = [c.start for c in calls if c.argv[:2] == ("run", vm)]
    if runs and up:
        intervals.append((runs[-1], float(up)))
    inside = union_length(intervals, lo, hi)
    return {"total": hi - lo, "inside": inside, "overhead": hi - lo - inside}


async def ready(rig: Rig) -> None:
    stream = await rig.sim.open_stream("fingerprint")
    with trio.fail_after(300):
        while True:
            attributes = (await stream.receive()).get("attributes", {})
            if str(attributes.get("driver.tart.warm.bench.ready", {}).get("int_val")) == "1":
                break
    await rig.sim.close_stream(stream)


async def run(*, runs: int = 5) -> dict[str, Any]:
    warm_total, cold_total = Sample(), Sample()
    warm_over, cold_over = Sample(), Sample()
    hits = 0
    async with open_rig("warm") as rig:
        await trio.to_thread.run_sync(lambda: rig.fake.tart("pull", MACOS_IMAGE, check=True))
        await rig.launch()
        await rig.sim.call("set_config", hcl=plugin_hcl(rig), with_nomad_config=True)
        try:
            for _ in range(runs):
                for warm in (True, False):
                    if warm:
                        await ready(rig)
                    started = await start(rig, warm=warm)
                    await rig.sim.call("wait_task", task_id=started["task_id"])
                    split = accounting(rig, started, rig.tart_calls())
                    resumed = bool(rig.fake.runtime(started["vm"]).get("restored"))
                    if warm:
                        hits += resumed
                        warm_total.add(split["total"])
                        warm_over.add(split["overhead"])
                    else:
                        cold_total.add(split["total"])
                        cold_over.add(split["overhead"])
                    await rig.destroy_all([started["task_id"]])
        finally:
            await rig.sim.call("kill")
            for vm in rig.fake.tart("list", "--quiet", "--source", "local").stdout.split():
                rig.fake.tart("delete", vm)
    return {
        "runs": runs,
        "hits": hits,
        "warm_total": warm_total.as_dict(),
        "cold_total": cold_total.as_dict(),
        "warm_overhead": warm_over.as_dict(),
        "cold_overhead": cold_over.as_dict(),
        "total_ratio": paired_ratios(warm_total, cold_total).as_dict(),
        "overhead_ratio": paired_ratios(warm_over, cold_over).as_dict(),
    }
