"""Image pulls (shared, stalled, cancelled), task stats and signals."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import launch_args, until
from tests.conformance.nomadsim import NomadSim, NomadSimError, SimStream
from tests.conformance.test_lifecycle import _variant, collect, start
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

PLUGIN = (
    'plugin "nomad-driver-tart" {\n  config {\n    boot_timeout = "30s"\n'
    '    image_pull_inactivity_timeout = "2s"\n  }\n}\n'
)


async def launch(sim: NomadSim, fake: FakeTart, tmp_path: Path) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log", **fake.env()))
    await sim.call("set_config", hcl=PLUGIN, with_nomad_config=True)


async def test_tasks_needing_one_image_share_one_pull(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.add_image(LINUX_IMAGE, os="linux", download_size=200_000_000, pull_speed=100_000_000)
    await launch(sim, fake_tart, tmp_path)
    tasks: list[dict[str, Any]] = []

    async def run() -> None:
        tasks.append(await start(sim, _variant("")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        nursery.start_soon(run)
    assert len(fake_tart.calls_of("pull")) == 1
    assert len(fake_tart.calls_of("clone")) == 2
    for task in tasks:
        await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
        await sim.call("destroy_task", task_id=task["task_id"])


async def test_a_stalled_pull_times_out_with_a_clear_event(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.add_image(LINUX_IMAGE, os="linux", download_size=200_000_000, pull_speed=100_000_000)
    fake_tart.set_image_knobs(LINUX_IMAGE, pull_stall_at=40)
    await launch(sim, fake_tart, tmp_path)
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        with pytest.raises(NomadSimError) as caught:
            await start(sim, _variant(""))
        nursery.cancel_scope.cancel()
    assert caught.value.recoverable is True
    assert "no progress for 2s" in caught.value.message
    assert any("failed" in e["message"] and "no progress" in e["message"] for e in events)
    assert fake_tart.calls_of("clone") == []


async def test_stopping_a_task_during_its_pull_cancels_it(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.add_image(LINUX_IMAGE, os="linux", download_size=2_000_000_000, pull_speed=50_000_000)
    await launch(sim, fake_tart, tmp_path)
    alloc = str(uuid.uuid4())
    task_id = f"{alloc}/vm/0badcafe"
    errors: list[str] = []

    async def run() -> None:
        task = {
            "id": task_id,
            "alloc_id": alloc,
            "resources": {"cpu_shares": 1000, "memory_mb": 2048},
        }
        try:
            await sim.call("start_task", task=task, job_hcl=_variant(""), create_alloc_dir=True)
        except NomadSimError as exc:
            errors.append(exc.message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await until(lambda: bool(fake_tart.calls_of("pull")))
        await sim.call("stop_task", task_id=task_id, timeout_seconds=5)
    assert errors and "stopped before its VM finished starting" in errors[0]
    assert fake_tart.calls_of("clone") == []
    await until(lambda: not any("pull" in " ".join(map(str, p)) for p in fake_tart.our_processes()))


async def _busy_sample(stream: SimStream) -> dict[str, Any]:
    """The first sample with a core of the guest kept busy (nomadsim checks every one)."""
    with trio.fail_after(20):
        while True:
            sample: dict[str, Any] = (await stream.receive())["stats"]
            usage = sample["agg_resource_usage"]
            assert sample["timestamp"] and int(usage["memory"]["rss"]) > 0
            assert usage["memory"]["measured_fields"] == ["RSS"]
            assert set(usage["cpu"]["measured_fields"]) == {"PERCENT", "TOTAL_TICKS"}
            if usage["cpu"]["percent"] >= 25:
                return sample


async def test_stats_are_what_nomad_alloc_status_shows(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """percent is summed over the VM's processes (100 per busy core) and total_ticks is the
    CPU in use now in MHz (Nomad's TicksConsumed), never more than the host has."""
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, _variant(""))
    ip = (await sim.call("inspect_task", task_id=task["task_id"]))["driver"]["attributes"]["ip"]
    busy = fake_tart.ssh_popen(ip, "timeout 60 sh -c 'while :; do :; done'")
    try:
        stream = await sim.open_stream("task_stats", task_id=task["task_id"], interval_seconds=0.2)
        await _busy_sample(stream)
        await sim.call("close_stream", stream=stream.id)

        # Nomad's own capacity figure is used: 4 cores of 2500 MHz (cpu_total_compute, or
        # what Nomad detected), whatever the plugin could find out about the host itself.
        cores = [{"core_id": i, "base_speed": "2500"} for i in range(4)]
        await sim.call("set_config", hcl=PLUGIN, with_nomad_config=True, topology={"cores": cores})
        stream = await sim.open_stream("task_stats", task_id=task["task_id"], interval_seconds=0.2)
        cpu = (await _busy_sample(stream))["agg_resource_usage"]["cpu"]
        await sim.call("close_stream", stream=stream.id)
        assert float(cpu["total_ticks"]) == pytest.approx(float(cpu["percent"]) * 25, rel=0.01)

        # Nomad before 1.7 sends no topology: the node's compute is cpu_shares / PercentTicks.
        await sim.call("set_config", hcl=PLUGIN, with_nomad_config=True, no_topology=True)
        stream = await sim.open_stream("task_stats", task_id=task["task_id"], interval_seconds=0.2)
        await _busy_sample(stream)
        await sim.call("close_stream", stream=stream.id)
    finally:
        busy.kill()
        busy.communicate()
    await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=task["task_id"])


async def test_signals(sim: NomadSim, fake_tart: FakeTart, tmp_path: Path) -> None:
    await launch(sim, fake_tart, tmp_path)
    task = await start(sim, _variant(""))
    with pytest.raises(NomadSimError) as caught:
        await sim.call("signal_task", task_id=task["task_id"], signal="SIGHUP")
    assert "SIGHUP" in caught.value.message and "SIGTERM" in caught.value.message
    await sim.call("signal_task", task_id=task["task_id"], signal="SIGTERM")
    with trio.fail_after(20):
        waited = await sim.call("wait_task", task_id=task["task_id"])
    assert waited["result"]["exit_code"] == 0, "SIGTERM shut the guest down cleanly"
    with contextlib.suppress(NomadSimError):
        await sim.call("destroy_task", task_id=task["task_id"])
