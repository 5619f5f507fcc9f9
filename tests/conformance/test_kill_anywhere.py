"""Kill the plugin anywhere in a task's life: nothing is left behind, nothing runs twice."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import launch_args, until
from tests.conformance.nomadsim import NomadSim, NomadSimError
from tests.conformance.test_lifecycle import _variant, start
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

PLUGIN = (
    'plugin "nomad-driver-tart" {\n  config {\n    boot_timeout = "30s"\n'
    '    gc {\n      period = "1s"\n      creation_grace = "1s"\n    }\n  }\n}\n'
)


async def launch(sim: NomadSim, fake: FakeTart, tmp_path: Path) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log", **fake.env()))
    await sim.call("set_config", hcl=PLUGIN, with_nomad_config=True)


def called(fake: FakeTart, sub: str) -> bool:
    return bool(fake.calls_of(sub))


@pytest.mark.parametrize(
    "point", ["pull", "clone", "set", "boot", "running", "stop", "before-destroy"]
)
async def test_kill_at(sim: NomadSim, fake_tart: FakeTart, tmp_path: Path, point: str) -> None:
    if point == "pull":
        fake_tart.add_image(
            LINUX_IMAGE, os="linux", download_size=400_000_000, pull_speed=40_000_000
        )
    if point == "boot":
        fake_tart.set_knobs("nomad-*", boot_delay=3)
    if point == "stop":
        fake_tart.set_knobs("nomad-*", stop_hang=True)
    await launch(sim, fake_tart, tmp_path)
    started: dict[str, Any] = {}

    async def run_task() -> None:
        with contextlib.suppress(NomadSimError):  # the plugin dies under it
            started.update(await start(sim, _variant("")))

    async def stop_task() -> None:
        with contextlib.suppress(NomadSimError):  # the plugin dies under it
            await sim.call(
                "stop_task", task_id=started["task_id"], timeout_seconds=30, signal="SIGKILL"
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_task)
        if point in ("pull", "clone", "set"):
            await until(lambda: called(fake_tart, point))
        elif point == "boot":
            await until(lambda: called(fake_tart, "run"))
        else:
            await until(lambda: bool(started))
            if point == "stop":
                # tart run ignores the power-off (stop_hang): tart stop is still waiting.
                nursery.start_soon(stop_task)
                await until(lambda: called(fake_tart, "stop"))
            elif point == "before-destroy":
                await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5)
        await sim.call("sigkill")
        nursery.cancel_scope.cancel()

    await launch(sim, fake_tart, tmp_path)
    if started:  # Nomad has a handle: it recovers, then stops and destroys the task
        await sim.call("recover_task", handle=started["handle"], drop_driver_config=True)
        await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5, signal="SIGKILL")
        await sim.call("destroy_task", task_id=started["task_id"])
    # Anything Nomad never heard of is the reconciler's.
    await until(lambda: fake_tart.tart("list", "-q", "--source", "local").stdout == "")
    await until(lambda: fake_tart.running_vms() == {})
    assert len(fake_tart.calls_of("run")) <= 1, "no VM was ever run twice"
    assert len(fake_tart.calls_of("clone")) <= 1
