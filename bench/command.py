"""Benchmark 8: what a CI command costs around it, against OpenSSH in the same run.

A task with a ``command`` (a fake macOS VM, quiet guest) whose script records the time it
starts and the time it ends (``date +%s.%N`` in the guest; the fake's guests share the
host's clock), a second apart. Two overheads:

- start: from the plugin's "VM reachable" event (the guest answered SSH; StartTask is
  about to start the command) to the command's first line;
- end: from the command's last line to WaitTask's answer in nomadsim (output followed,
  exit status read, the task finished).

Baseline, alternating with the plugin runs on a VM of its own: OpenSSH's ``ssh guest
'date; date'`` — from starting the client to the remote command's first line (a login
and an exec), and from its last line to the client's exit (how soon a plain SSH client
learns that its command ended).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from datetime import datetime
from typing import Any

import trio

from bench.rig import PASSWORD, Rig, open_rig
from bench.util import Sample, paired_ratios
from tests.faketart.fixtures import MACOS_IMAGE

# The build "runs" for a second, so that the plugin follows it when it ends (as it does
# any build that lasts longer than the plugin takes to attach, a few hundred ms).
SCRIPT = (
    'd="$NOMAD_ALLOC_DIR/data"; date +%s.%N > "$d/started"; echo building; sleep 1; '
    'date +%s.%N > "$d/ended"'
)


def job_hcl() -> str:
    escaped = SCRIPT.replace("\\", "\\\\").replace('"', '\\"').replace("${", "$${")
    return (
        'job "ci" {\n  group "g" {\n    task "build" {\n      driver = "tart"\n'
        f'      config {{\n        url = "{MACOS_IMAGE}"\n        ssh_user = "admin"\n'
        f'        ssh_password = "{PASSWORD}"\n        command = "/bin/sh"\n'
        f'        args = ["-c", "{escaped}"]\n      }}\n    }}\n  }}\n}}\n'
    )


async def collect(stream: Any, into: list[dict[str, Any]]) -> None:
    async for event in stream:
        into.append(event)


def _event_time(events: list[dict[str, Any]], alloc: str, prefix: str) -> float:
    for event in events:
        if event["alloc_id"] == alloc and event["message"].startswith(prefix):
            return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
    return float("nan")


async def plugin_run(rig: Rig, events: list[dict[str, Any]]) -> tuple[float, float]:
    alloc = str(uuid.uuid4())
    task = {
        "alloc_id": alloc,
        "alloc_dir": str(rig.allocs / alloc),
        "env": {},
        "resources": {"cpu_shares": 4000, "memory_mb": 4096, "cpuset_cpus": "0,1,2,3"},
    }
    started = await rig.sim.call("start_task", task=task, job_hcl=job_hcl(), create_alloc_dir=True)
    try:
        await rig.sim.call("wait_task", task_id=started["task_id"])
        t_waited = time.time()
        data = rig.allocs / alloc / "alloc" / "data"
        t_started = float((data / "started").read_text())
        t_ended = float((data / "ended").read_text())
        # the event came during StartTask, long before the command ended
        t_reachable = _event_time(events, alloc, "VM reachable")
    finally:
        with contextlib.suppress(Exception):
            await rig.sim.call("destroy_task", task_id=started["task_id"])
    return t_started - t_reachable, t_waited - t_ended


def openssh_run(rig: Rig, ip: str) -> tuple[float, float]:
    argv = rig.fake.ssh_argv(ip, "date +%s.%N; echo building; sleep 1; date +%s.%N")
    t0 = time.time()
    out = subprocess.run(
        argv, capture_output=True, text=True, env=rig.fake.ssh_env(PASSWORD), check=True
    ).stdout.split()
    t_exit = time.time()
    return float(out[0]) - t0, t_exit - float(out[-1])


async def run(*, runs: int = 5) -> dict[str, Any]:
    out: dict[str, Any] = {}
    start, end, base_start, base_end = Sample(), Sample(), Sample(), Sample()
    async with open_rig("command") as rig:
        rig.fake.set_knobs("*", log_rate=0)
        await trio.to_thread.run_sync(lambda: rig.fake.tart("pull", MACOS_IMAGE, check=True))
        rig.fake.make_vm("openssh-baseline", MACOS_IMAGE)
        _vm, ip = await trio.to_thread.run_sync(rig.fake.start_vm, "openssh-baseline")
        await rig.launch()
        events: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, await rig.sim.open_stream("task_events"), events)
            await trio.to_thread.run_sync(openssh_run, rig, ip)  # warm caches
            for _ in range(runs):
                s, e = await plugin_run(rig, events)
                start.add(s)
                end.add(e)
                s, e = await trio.to_thread.run_sync(openssh_run, rig, ip)
                base_start.add(s)
                base_end.add(e)
            nursery.cancel_scope.cancel()
    out["start"] = start.as_dict()
    out["end"] = end.as_dict()
    out["openssh_start"] = base_start.as_dict()
    out["openssh_end"] = base_end.as_dict()
    out["start_ratio"] = paired_ratios(start, base_start).as_dict()
    out["end_ratio"] = paired_ratios(end, base_end).as_dict()
    return out
