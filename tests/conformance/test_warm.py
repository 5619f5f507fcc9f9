"""Warm start: a command task resumes a suspended clone of its pool's golden, and every
doubt boots cold in the same StartTask (the fake models Tart's suspend and restore)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import launch_args, until
from tests.conformance.nomadsim import NomadSim, SimStream
from tests.conformance.test_command import hcl_string
from tests.conformance.test_lifecycle import collect, vm_names
from tests.faketart.fixtures import MACOS_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

READY = "driver.tart.warm.ci.ready"


def plugin_hcl(warm_dir: Path, **pool: str) -> str:
    fields = {"name": '"ci"', "image": f'"{MACOS_IMAGE}"', "cores": "4", "memory": "4096"}
    fields.update(pool)
    body = "\n".join(f"      {k} = {v}" for k, v in fields.items())
    return (
        'plugin "nomad-driver-tart" {\n  config {\n    boot_timeout = "30s"\n'
        f'    warm_dir = "{warm_dir}"\n    warm_pool {{\n{body}\n    }}\n  }}\n}}\n'
    )


SCRIPT = r"""
out="$NOMAD_ALLOC_DIR/data"
cat "$NOMAD_TASK_DIR/input.txt" > "$out/seen.txt"
sysctl -n kern.boottime > "$out/boottime.txt"
date +%s > "$out/clock.txt"
echo "ran in $(pwd)"
exit 7
"""


def warm_job(*, cores: int = 4, warm: bool = True) -> str:
    argv = ", ".join(hcl_string(a) for a in ["-c", SCRIPT])
    return (
        'job "ci" {\n  group "g" {\n    task "build" {\n      driver = "tart"\n'
        '      template {\n        data        = "from local/\\n"\n'
        '        destination = "local/input.txt"\n      }\n'
        f'      config {{\n        url = "{MACOS_IMAGE}"\n        ssh_user = "admin"\n'
        '        ssh_password = "admin"\n        command = "/bin/sh"\n'
        f"        args = [{argv}]\n        warm_start = {str(warm).lower()}\n      }}\n"
        f"    }}\n  }}\n}}\n"
    ) + f"# cores {cores}\n"


async def launch(sim: NomadSim, fake: FakeTart, tmp_path: Path, **pool: str) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log", **fake.env()))
    await sim.call("set_config", hcl=plugin_hcl(tmp_path / "warm", **pool), with_nomad_config=True)


async def start(sim: NomadSim, job_hcl: str, *, cores: int = 4) -> dict[str, Any]:
    spec = {
        "alloc_id": str(uuid.uuid4()),
        "env": {},
        "resources": {
            "cpu_shares": 1000 * cores,
            "memory_mb": 4096,
            "cpuset_cpus": ",".join(str(i) for i in range(cores)),
        },
    }
    return await sim.call("start_task", task=spec, job_hcl=job_hcl, create_alloc_dir=True)


async def ready_slots(stream: SimStream, wanted: int, seconds: float = 90) -> None:
    with trio.fail_after(seconds):
        while True:
            message = await stream.receive()
            attributes = message.get("attributes", {})
            value = attributes.get(READY, {})
            if str(value.get("int_val", value.get("string_val", ""))) == str(wanted):
                return


async def test_a_matching_command_task_resumes_a_warm_clone_and_runs_its_command(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.set_knobs("*", suspend_seconds=0.2, resume_seconds=0.2)
    await launch(sim, fake_tart, tmp_path)
    fingerprints = await sim.open_stream("fingerprint")
    await ready_slots(fingerprints, 1)
    golden_sets = len(fake_tart.calls_of("set"))
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        started = await start(sim, warm_job())
        waited = await sim.call("wait_task", task_id=started["task_id"])
        nursery.cancel_scope.cancel()
    messages = [e["message"] for e in events if e["task_id"] == started["task_id"]]
    print(messages)
    assert any(m.startswith("Warm start: resumed from pool ci slot 0") for m in messages), messages
    assert waited["result"]["exit_code"] == 7
    data = Path(started["alloc_dir"]) / "alloc" / "data"
    assert (data / "seen.txt").read_text() == "from local/\n"
    assert len(fake_tart.calls_of("set")) == golden_sets, "no tart set on a warm clone"
    await sim.call("destroy_task", task_id=started["task_id"])
    await sim.close_stream(fingerprints)
    await sim.call("kill")
    for vm in vm_names(fake_tart):
        fake_tart.tart("delete", vm)
    await until(lambda: vm_names(fake_tart) == [])
