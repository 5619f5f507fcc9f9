"""Kill the plugin anywhere in a task's life: nothing is left behind, nothing runs twice.

Nomad SIGKILLs the plugin, and only the plugin: a ``tart pull``, ``tart clone`` or
``tart set`` it had started, or a VM supervisor it had just launched, keeps running. Then
Nomad acts on what it knows: a task whose StartTask returned has a handle and is recovered
(then stopped and destroyed); a task whose StartTask was cut short is started again under
a new task ID, so its VM has the same name. Each round kills the plugin at a random moment
of two staggered task lives, which lands in pulls, clones (they take a while here and hold
Tart's $TART_HOME lock, as Clone.swift does), sets, `tart run` building the VM before it
locks it (as Run.swift does), boots, running VMs, stops and destroys.
Set ``KILL_ANYWHERE_SEED`` to replay a run.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import launch_args, live_supervisor_pids, until
from tests.conformance.nomadsim import NomadSim, NomadSimError
from tests.conformance.test_lifecycle import _variant, start
from tests.faketart.fixtures import FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

PLUGIN = 'plugin "nomad-driver-tart" {\n  config {\n    boot_timeout = "30s"\n  }\n}\n'
ROUNDS = 5
#: A task's life here takes about this long: pull ~1 s, clone ~1 s, set, `tart run`
#: building the VM ~1 s before it locks it, boot, SSH, a moment of running, stop, destroy.
#: Kills land anywhere in it (and a little after).
LIFE_SECONDS = 6.0
STAGGER_SECONDS = 0.8
SEED = int(os.environ.get("KILL_ANYWHERE_SEED", random.randrange(1 << 32)))


class Life:
    """One task's life as Nomad would drive it, and what Nomad learnt before the kill."""

    def __init__(self, image: str) -> None:
        self.alloc_id = str(uuid.uuid4())
        self.vm = f"nomad-{self.alloc_id}"
        self.job = _variant("").replace("ghcr.io/cirruslabs/ubuntu:latest", image)
        self.started: dict[str, Any] = {}
        self.stopped = False

    async def run(self, sim: NomadSim) -> None:
        with contextlib.suppress(NomadSimError):  # the plugin dies under it
            self.started = await start(sim, self.job, alloc_id=self.alloc_id)
            await trio.sleep(0.5)
            await sim.call("stop_task", task_id=self.started["task_id"], timeout_seconds=5)
            self.stopped = True
            await sim.call("destroy_task", task_id=self.started["task_id"])


def live_supervisors(vm: str) -> list[int]:
    return [p for p in live_supervisor_pids() if _mentions(p, vm)]


def _mentions(pid: int, vm: str) -> bool:
    try:
        return vm.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


async def finish_like_nomad(sim: NomadSim, fake: FakeTart, life: Life, seed: str) -> None:
    """After the relaunch: recover a task with a handle, start one without again."""
    if life.started:
        task_id = life.started["task_id"]
        try:
            await sim.call("recover_task", handle=life.started["handle"], drop_driver_config=True)
        except NomadSimError:
            # The VM was already gone (killed while being destroyed): Nomad destroys the
            # task it could not recover, with force.
            await sim.call("destroy_task", task_id=task_id, force=True)
        else:
            await sim.call("stop_task", task_id=task_id, timeout_seconds=5, signal="SIGKILL")
            await sim.call("destroy_task", task_id=task_id)
        runs = [c for c in fake.calls_of("run") if c[1] == life.vm]
        assert len(runs) == 1, f"a recovered VM never runs twice ({seed})"
        return
    # StartTask never returned: Nomad starts the task again (new task ID, same VM name).
    again = await start(sim, life.job, alloc_id=life.alloc_id)
    assert fake.running_vms().get(life.vm), seed
    assert len(live_supervisors(life.vm)) == 1, f"the earlier start's supervisor ended ({seed})"
    assert [n for n in fake.running_vms() if n.startswith(life.vm)] == [life.vm], seed
    echoed = await sim.call("exec_task", task_id=again["task_id"], command=["echo", "up"])
    assert echoed["exit_code"] == 0, seed
    clones = [c for c in fake.calls_of("clone") if c[-1] == life.vm]
    assert len(clones) <= 2, f"one clone per start ({seed})"
    await sim.call("stop_task", task_id=again["task_id"], timeout_seconds=5)
    waited = await sim.call("wait_task", task_id=again["task_id"])
    assert waited["result"]["exit_code"] == 0 and not waited["err"], seed
    await sim.call("destroy_task", task_id=again["task_id"])


@pytest.mark.slow
async def test_the_plugin_killed_at_random_moments(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    fake_tart.set_knobs("nomad-*", clone_seconds=1.0, init_seconds=1.0)
    for round_ in range(ROUNDS):
        # A new tag every round, so that every life begins with a pull.
        image = fake_tart.add_image(
            f"ghcr.io/cirruslabs/ubuntu:r{round_}",
            os="linux",
            download_size=40_000_000,
            pull_speed=40_000_000,
        )
        log = tmp_path / f"plugin-{round_}.log"
        await sim.call("launch", **launch_args(log, **fake_tart.env()))
        await sim.call("set_config", hcl=PLUGIN, with_nomad_config=True)
        lives = [Life(image), Life(image)]
        kill_at = rng.uniform(0, LIFE_SECONDS + STAGGER_SECONDS)
        seed = f"KILL_ANYWHERE_SEED={SEED}, round {round_}, kill at {kill_at:.2f}s"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lives[0].run, sim)
            await trio.sleep(STAGGER_SECONDS)
            nursery.start_soon(lives[1].run, sim)
            await trio.sleep(max(kill_at - STAGGER_SECONDS, 0))  # the random kill point
            await sim.call("sigkill")
            nursery.cancel_scope.cancel()

        await sim.call("launch", **launch_args(log, **fake_tart.env()))
        await sim.call("set_config", hcl=PLUGIN, with_nomad_config=True)
        for life in lives:
            if not life.stopped or not life.started:
                await finish_like_nomad(sim, fake_tart, life, seed)
            elif life.started:  # killed between stop and destroy, or after the destroy
                with contextlib.suppress(NomadSimError):
                    await sim.call(
                        "recover_task", handle=life.started["handle"], drop_driver_config=True
                    )
                await sim.call("destroy_task", task_id=life.started["task_id"], force=True)
        for life in lives:
            await until(lambda life=life: not live_supervisors(life.vm))
        assert fake_tart.running_vms() == {}, seed
        assert fake_tart.tart("list", "-q", "--source", "local").stdout == "", seed
        await sim.call("kill")
