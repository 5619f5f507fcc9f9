"""Warm start: a command task resumes a suspended clone of its pool's golden, and every
doubt boots cold in the same StartTask (the fake models Tart's suspend and restore)."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import launch_args, until
from tests.conformance.nomadsim import NomadSim, NomadSimError, SimStream
from tests.conformance.test_command import hcl_string
from tests.conformance.test_lifecycle import collect, vm_names
from tests.faketart.fixtures import MACOS_IMAGE, FakeTart, needs_guest_reason
from tests.plugin_process import plugin_command

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


async def start(
    sim: NomadSim, job_hcl: str, *, cores: int = 4, alloc_id: str = ""
) -> dict[str, Any]:
    spec = {
        "alloc_id": alloc_id or str(uuid.uuid4()),
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


#: The task VMs (``nomad-<alloc uuid>``), not the goldens (``nomad-warm-...``).
TASK_VMS = "nomad-????????-*"


@contextlib.asynccontextmanager
async def goldens_removed(sim: NomadSim, fake_tart: FakeTart) -> AsyncIterator[None]:
    """Goldens outlive tasks and plugins by design: each test removes them at its end."""
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            with contextlib.suppress(NomadSimError):
                await sim.call("kill")
            for vm in fake_tart.running_vms():
                fake_tart.tart("stop", vm)
            await until(lambda: not fake_tart.running_vms())
            for vm in vm_names(fake_tart):
                fake_tart.tart("delete", vm)


def goldens(fake: FakeTart) -> list[str]:
    return [vm for vm in vm_names(fake) if vm.startswith("nomad-warm-ci-s0-g")]


async def run_task(
    sim: NomadSim, fake: FakeTart, events: list[dict[str, Any]], *, cores: int = 4
) -> tuple[dict[str, Any], list[str]]:
    """Start the job, wait for its end, destroy it: its handle and its events' messages."""
    started = await start(sim, warm_job(cores=cores), cores=cores)
    waited = await sim.call("wait_task", task_id=started["task_id"])
    assert waited["result"]["exit_code"] == 7, waited
    data = Path(started["alloc_dir"]) / "alloc" / "data"
    assert (data / "seen.txt").read_text() == "from local/\n", "the task's own local/"
    await sim.call("destroy_task", task_id=started["task_id"])
    vm = f"nomad-{started['task_config']['alloc_id']}"
    assert vm not in vm_names(fake), "DestroyTask removes the task's VM"
    return started, [e["message"] for e in events if e["task_id"] == started["task_id"]]


def one(messages: list[str], prefix: str) -> str:
    found = [m for m in messages if m.startswith(prefix)]
    assert len(found) == 1, messages
    return found[0]


async def test_a_matching_command_task_resumes_a_warm_clone_and_runs_its_command(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    async with goldens_removed(sim, fake_tart):
        fake_tart.set_knobs("*", suspend_seconds=0.2, resume_seconds=0.2)
        await launch(sim, fake_tart, tmp_path)
        fingerprints = await sim.open_stream("fingerprint")
        await ready_slots(fingerprints, 1)
        node = await sim.node_attributes()
        assert node["driver.tart.warm_start"] == "enabled"
        (golden,) = goldens(fake_tart)
        golden_sets = len(fake_tart.calls_of("set"))
        events: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, await sim.open_stream("task_events"), events)
            started, messages = await run_task(sim, fake_tart, events)
            nursery.cancel_scope.cancel()
        hit = one(messages, "Warm start: resumed from pool ci slot 0")
        assert "restore" in hit and "clock stepped" in hit
        assert not [m for m in messages if m.startswith(("Cold start", "Warm start failed"))]
        vm = f"nomad-{started['task_config']['alloc_id']}"
        assert [c for c in fake_tart.calls_of("clone") if c[-1] == vm] == [["clone", golden, vm]]
        assert len(fake_tart.calls_of("set")) == golden_sets, "no tart set on a warm clone"
        (golden_run,) = [c for c in fake_tart.calls_of("run") if c[1] == golden]
        (task_run,) = [c for c in fake_tart.calls_of("run") if c[1] == vm]
        assert task_run[2:] == golden_run[2:], "the golden's tart run, byte for byte"
        data = Path(started["alloc_dir"]) / "alloc" / "data"
        boot = data / "boottime.txt"
        assert boot.read_text().startswith("{ sec = "), "a resumed macOS guest"
        assert abs(int((data / "clock.txt").read_text()) - time.time()) < 30, (
            "the clock was stepped"
        )
        await ready_slots(fingerprints, 1)  # the slot serves the next job
        await sim.close_stream(fingerprints)


async def test_every_doubt_boots_cold_in_the_same_start_and_says_why(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    async with goldens_removed(sim, fake_tart):
        fake_tart.set_knobs("*", suspend_seconds=0.2, resume_seconds=0.2)
        await launch(sim, fake_tart, tmp_path, resume_timeout='"6s"')
        fingerprints = await sim.open_stream("fingerprint")
        await ready_slots(fingerprints, 1)
        events: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, await sim.open_stream("task_events"), events)

            # Not the pool's shape: cold, naming the field.
            _, messages = await run_task(sim, fake_tart, events, cores=6)
            assert one(messages, "Cold start: ") == (
                "Cold start: resources.cores is 6; warm pool ci's VMs have 4"
            )

            # A clone without the saved state (Tart copies it with try?).
            fake_tart.set_knobs(TASK_VMS, clone_state_copy_failure=True)
            _, messages = await run_task(sim, fake_tart, events)
            assert "carries no saved state" in one(messages, "Warm start failed: ")
            fake_tart.set_knobs(TASK_VMS, clone_state_copy_failure=False)
            await ready_slots(fingerprints, 1)

            # The share shows what the golden saw, not this task's directories: the nonce.
            fake_tart.set_knobs(TASK_VMS, restored_share_view="saved")
            _, messages = await run_task(sim, fake_tart, events)
            assert "the warm share does not show this task's directories" in one(
                messages, "Warm start failed: "
            )
            fake_tart.set_knobs(TASK_VMS, restored_share_view="new")
            await ready_slots(fingerprints, 1)

            # Another running VM has the golden's MAC: Tart resets the clone's and boots it.
            (golden,) = goldens(fake_tart)
            fake_tart.tart("clone", golden, "intruder", check=True)
            (golden_run,) = [c for c in fake_tart.calls_of("run") if c[1] == golden]
            intruder = fake_tart.run_vm("intruder", *golden_run[3:], no_graphics=True)
            await until(lambda: "intruder" in fake_tart.running_vms())
            _, messages = await run_task(sim, fake_tart, events)
            assert "had the golden's MAC address" in one(messages, "Warm start failed: ")
            fake_tart.tart("stop", "intruder", check=True)
            intruder.wait()
            await until(lambda: "intruder" not in fake_tart.running_vms())
            fake_tart.tart("delete", "intruder", check=True)
            await ready_slots(fingerprints, 1)

            # The resumed guest answers with another host key than the golden had.
            keys = fake_tart.vm_dir(golden) / ".faketart"
            saved = {
                n: (keys / n).read_bytes()
                for n in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub")
            }
            for name in saved:
                (keys / name).unlink()
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    str(keys / "ssh_host_ed25519_key"),
                ],
                check=True,
            )
            _, messages = await run_task(sim, fake_tart, events)
            assert "host key is not the golden's" in one(messages, "Warm start failed: ")
            for name, content in saved.items():
                (keys / name).write_bytes(content)
            await ready_slots(fingerprints, 1)

            # A clone that does not answer within the pool's resume_timeout.
            fake_tart.set_knobs(TASK_VMS, resume_seconds=30)
            _, messages = await run_task(sim, fake_tart, events)
            assert "did not answer within 6s" in one(messages, "Warm start failed: ")
            fake_tart.set_knobs(TASK_VMS, resume_seconds=0.2)
            await ready_slots(fingerprints, 1)

            # Refused restores: twice, and the golden is built again.
            fake_tart.set_knobs(TASK_VMS, restore_failure=True)
            for _ in range(2):
                _, messages = await run_task(sim, fake_tart, events)
                failed = one(messages, "Warm start failed: ")
                assert "refusing the restore" in failed and "VZErrorDomain Code=12" in failed
            fake_tart.set_knobs(TASK_VMS, restore_failure=None)
            # a new golden after two refused restores
            await until(lambda: goldens(fake_tart) not in ([golden], []), 60)
            await ready_slots(fingerprints, 1)
            nursery.cancel_scope.cancel()
        for message in (m["message"] for m in events):
            assert "admin" not in message or "ssh_user" in message
        await sim.close_stream(fingerprints)


async def test_a_host_whose_self_test_fails_boots_every_job_cold_and_says_so(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    async with goldens_removed(sim, fake_tart):
        fake_tart.set_knobs(
            "*", suspend_seconds=0.2, resume_seconds=0.2, restored_share_view="saved"
        )
        await launch(sim, fake_tart, tmp_path)
        fingerprints = await sim.open_stream("fingerprint")
        with trio.fail_after(90):
            while True:
                message = await fingerprints.receive()
                if "Warm pool ci is unavailable" in message.get("health_description", ""):
                    break
        assert "self-test" in message["health_description"] and message["health"] == "HEALTHY"
        node = await sim.node_attributes()
        assert node["driver.tart.warm_start"] == "unavailable" and node[READY] == "0"
        assert goldens(fake_tart) == [], "a golden this host cannot resume is not kept"
        events: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, await sim.open_stream("task_events"), events)
            _, messages = await run_task(sim, fake_tart, events)
            nursery.cancel_scope.cancel()
        assert one(messages, "Cold start: ").startswith("Cold start: warm pool ci is unavailable")
        await sim.close_stream(fingerprints)


async def test_a_plugin_killed_mid_warm_start_or_mid_build_leaves_nothing_behind(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    async with goldens_removed(sim, fake_tart):
        # Killed while its golden is saving: the next plugin removes it and builds anew.
        fake_tart.set_knobs("nomad-warm-*", suspend_seconds=30, resume_seconds=0.2)
        await launch(sim, fake_tart, tmp_path)
        await until(
            lambda: any(c[1].startswith("nomad-warm-ci") for c in fake_tart.calls_of("suspend")), 60
        )
        (lost,) = goldens(fake_tart)
        await sim.call("sigkill")
        fake_tart.set_knobs("nomad-warm-*", suspend_seconds=0.2)
        await launch(sim, fake_tart, tmp_path)
        fingerprints = await sim.open_stream("fingerprint")
        await ready_slots(fingerprints, 1)
        (golden,) = goldens(fake_tart)
        assert golden != lost and lost not in vm_names(fake_tart)
        assert list(fake_tart.running_vms()) == [], "no golden left running"
        await sim.close_stream(fingerprints)

        # Killed while a task's clone resumes: Nomad starts the task again, warm again.
        fake_tart.set_knobs(TASK_VMS, resume_seconds=5)
        alloc = str(uuid.uuid4())
        vm = f"nomad-{alloc}"
        async with trio.open_nursery() as nursery:

            async def first_attempt() -> None:
                with contextlib.suppress(NomadSimError):
                    await start(sim, warm_job(), alloc_id=alloc)

            nursery.start_soon(first_attempt)
            await until(lambda: any(c[1] == vm for c in fake_tart.calls_of("run")), 30)
            await sim.call("sigkill")
        fake_tart.set_knobs(TASK_VMS, resume_seconds=0.2)
        await launch(sim, fake_tart, tmp_path)
        fingerprints = await sim.open_stream("fingerprint")
        # The slot is held by the task's VM, which still runs; the task's repeated start
        # ends it and may take the slot again.
        await ready_slots(fingerprints, 0)
        events: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, await sim.open_stream("task_events"), events)
            started = await start(sim, warm_job(), alloc_id=alloc)
            waited = await sim.call("wait_task", task_id=started["task_id"])
            await sim.call("destroy_task", task_id=started["task_id"])
            nursery.cancel_scope.cancel()
        assert waited["result"]["exit_code"] == 7
        messages = [e["message"] for e in events if e["task_id"] == started["task_id"]]
        assert one(messages, "Warm start: resumed from pool ci slot 0")
        assert vm_names(fake_tart) == [golden], "the golden, and nothing else"
        await ready_slots(fingerprints, 1)
        await sim.close_stream(fingerprints)


async def test_warm_check_tells_an_operator_what_this_host_supports(
    fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.set_knobs("*", suspend_seconds=0.2, resume_seconds=0.2)
    argv = [*plugin_command(), "warm-check", "--image", MACOS_IMAGE, "--cores", "4"]
    env = {**fake_tart.env(), "TART_SSH_PASSWORD": "admin"}
    passed = await trio.run_process(argv, env=env, capture_stdout=True, check=False)
    out = passed.stdout.decode()
    assert passed.returncode == 0, out
    assert "self-test passed" in out and out.rstrip().endswith(
        f"This host supports warm start for {MACOS_IMAGE}."
    )
    assert vm_names(fake_tart) == [], "it removes what it made"

    fake_tart.set_knobs("*", restored_share_view="saved")  # a host whose shares stay put
    failed = await trio.run_process(argv, env=env, capture_stdout=True, check=False)
    out = failed.stdout.decode()
    assert failed.returncode == 1, out
    assert "self-test failed: the warm share does not show this task's directories" in out
    assert "does NOT support warm start" in out
    assert vm_names(fake_tart) == []


async def test_a_golden_is_built_again_when_tart_or_its_pool_changes(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    async with goldens_removed(sim, fake_tart):
        fake_tart.set_knobs("*", suspend_seconds=0.2, resume_seconds=0.2)
        await launch(sim, fake_tart, tmp_path)
        fingerprints = await sim.open_stream("fingerprint")
        await ready_slots(fingerprints, 1)
        await sim.close_stream(fingerprints)
        (first,) = goldens(fake_tart)

        # Tart is upgraded while the plugin is down: the golden is not trusted any more.
        await sim.call("sigkill")
        await sim.call(
            "launch",
            **launch_args(tmp_path / "plugin.log", **fake_tart.env(FAKETART_VERSION="2.34.0")),
        )
        await sim.call("set_config", hcl=plugin_hcl(tmp_path / "warm"), with_nomad_config=True)
        await until(lambda: goldens(fake_tart) not in ([first], []), 60)
        (second,) = goldens(fake_tart)

        # The pool's shape changes: its golden is rebuilt to it.
        await sim.call(
            "set_config", hcl=plugin_hcl(tmp_path / "warm", memory="8192"), with_nomad_config=True
        )
        await until(lambda: goldens(fake_tart) not in ([second], []), 60)
        (third,) = goldens(fake_tart)
        assert fake_tart.config(third)["memorySize"] == 8192 * 1024 * 1024
