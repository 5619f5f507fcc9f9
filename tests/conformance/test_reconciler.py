"""The orphan reconciler removes VMs named like ours that no task owns, and nothing else."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from tests.conformance.conftest import launch_args, plugin_log, until
from tests.conformance.nomadsim import NomadSim
from tests.conformance.test_lifecycle import _variant, start
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")


def gc_config(dry_run: bool) -> str:
    return (
        'plugin "nomad-driver-tart" {\n  config {\n    boot_timeout = "30s"\n'
        '    fingerprint_period = "1s"\n'
        f'    gc {{\n      period = "1s"\n      creation_grace = "1s"\n'
        f"      dry_run = {'true' if dry_run else 'false'}\n    }}\n  }}\n}}\n"
    )


def local_vms(fake: FakeTart) -> set[str]:
    return set(fake.tart("list", "--quiet", "--source", "local").stdout.split())


@pytest.mark.parametrize("dry_run", [True, False])
async def test_planted_orphans_go_and_other_vms_stay(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path, dry_run: bool
) -> None:
    orphan = f"nomad-{uuid.uuid4()}"
    for name in (orphan, "my-own-vm", "nomad-build"):
        fake_tart.make_vm(name, LINUX_IMAGE)
    fake_tart.run_vm(orphan)
    log = tmp_path / "plugin.log"
    await sim.call("launch", **launch_args(log, **fake_tart.env()))
    await sim.call("set_config", hcl=gc_config(dry_run), with_nomad_config=True)
    owned = await start(sim, _variant(""))
    owned_vm = f"nomad-{owned['task_config']['alloc_id']}"

    def reported() -> bool:
        return any(orphan == e.get("vm") for e in plugin_log(log))

    await until(reported)
    if dry_run:
        messages = [e["@message"] for e in plugin_log(log) if e.get("vm") == orphan]
        assert all("dry run" in m for m in messages)
        assert orphan in local_vms(fake_tart)
    else:
        await until(lambda: orphan not in local_vms(fake_tart))
    assert {"my-own-vm", "nomad-build", owned_vm} <= local_vms(fake_tart)
    await sim.call("stop_task", task_id=owned["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=owned["task_id"])
    fake_tart.tart("stop", orphan, "--timeout", "0")
    for name in (orphan, "my-own-vm", "nomad-build"):
        fake_tart.tart("delete", name)


async def test_throwaway_plugin_launches_never_reconcile(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    orphan = f"nomad-{uuid.uuid4()}"
    fake_tart.make_vm(orphan, LINUX_IMAGE)
    log = tmp_path / "plugin.log"
    await sim.call("launch", **launch_args(log, **fake_tart.env()))
    await sim.call("set_config", hcl=gc_config(False))  # the validation launch: no nomad_config
    stream = await sim.open_stream("fingerprint")
    for _ in range(4):  # one fingerprint a second: together they outlast grace and period
        with trio.fail_after(10):
            await stream.receive()
    assert orphan in local_vms(fake_tart)
    fake_tart.tart("delete", orphan)
