"""Benchmark 9: InspectTask while one guest attacks, against the same without the attack.

Ten ordinary tasks (Linux VMs streaming guest logs) and, in the attack phase, one CI task
whose command floods its own status file without end (8 MiB of line breaks, then 4 MiB
without one, over and over) and prints output with no line break, with ``guest_logs`` on.
In both phases InspectTask is called on the ordinary tasks in turn, one call after the
other, and each call's latency through nomadsim is kept: the baseline phase (no attacker)
and the attack phase alternate, so both see the same machine.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import trio

from bench.rig import PASSWORD, Rig, job_hcl, open_rig
from bench.util import Sample
from tests.faketart.fixtures import LINUX_IMAGE

ATTACK = (
    'for s in "$HOME"/.nomad-tart/*/status; do st="$s"; done\n'
    "head -c 1073741824 /dev/zero | tr '\\0' x &\n"
    "while :; do\n"
    '  head -c 8388608 /dev/zero | tr "\\0" "\\n" >> "$st"\n'
    '  head -c 4194304 /dev/zero | tr "\\0" x >> "$st"\n'
    "done\n"
)


def attack_hcl() -> str:
    escaped = ATTACK.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return (
        'job "attack" {\n  group "g" {\n    task "build" {\n      driver = "tart"\n'
        f'      config {{\n        url = "{LINUX_IMAGE}"\n        ssh_user = "admin"\n'
        f'        ssh_password = "{PASSWORD}"\n        command = "/bin/sh"\n'
        f'        args = ["-c", "{escaped}"]\n        guest_logs = true\n'
        "      }\n    }\n  }\n}\n"
    )


async def inspect_round(rig: Rig, task_ids: list[str], calls: int, into: Sample) -> None:
    for i in range(calls):
        t0 = time.perf_counter()
        await rig.sim.call("inspect_task", task_id=task_ids[i % len(task_ids)])
        into.add(time.perf_counter() - t0)


async def start_attacker(rig: Rig) -> dict[str, Any]:
    alloc = str(uuid.uuid4())
    task = {
        "alloc_id": alloc,
        "alloc_dir": str(rig.allocs / alloc),
        "env": {},
        "resources": {"cpu_shares": 1000, "memory_mb": 1024, "cpuset_cpus": "0"},
    }
    started: dict[str, Any] = await rig.sim.call(
        "start_task", task=task, job_hcl=attack_hcl(), create_alloc_dir=True
    )
    return started


async def run(*, tasks: int = 10, rounds: int = 3, calls: int = 200) -> dict[str, Any]:
    quiet, attacked = Sample(), Sample()
    async with open_rig("hostile") as rig:
        rig.fake.set_knobs("*", log_rate=20)
        await trio.to_thread.run_sync(lambda: rig.fake.tart("pull", LINUX_IMAGE, check=True))
        await rig.launch()
        normal = [await rig.start(job_hcl()) for _ in range(tasks)]
        ids = [t["task_id"] for t in normal]
        try:
            for _ in range(rounds):
                await inspect_round(rig, ids, calls, quiet)
                attacker = await start_attacker(rig)
                try:
                    await trio.sleep(2)  # the flood is under way
                    await inspect_round(rig, ids, calls, attacked)
                finally:
                    await rig.destroy_all([attacker["task_id"]])
        finally:
            await rig.destroy_all(ids)
    return {
        "tasks": tasks,
        "calls": calls * rounds,
        "quiet": quiet.as_dict() | {"p99": quiet.percentile(99)},
        "attacked": attacked.as_dict() | {"p99": attacked.percentile(99)},
    }
