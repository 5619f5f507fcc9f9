"""The demo: one job's whole life, driven the way Nomad drives the plugin.

Run with ``scripts/dev.sh demo`` (root, Linux). The Nomad side is the Go stand-in on
the real go-plugin/go-cty/hcl libraries; Tart is the fake host whose VMs are real SSH
guests. Everything printed is what a Nomad user or operator would see.
"""

from __future__ import annotations

import base64
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from tests.conformance.nomadsim import NomadSim, NomadSimError, SimStream, open_nomadsim
from tests.faketart.fixtures import MACOS_IMAGE, FakeTart, needs_guest_reason
from tests.plugin_process import plugin_command

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "examples" / "macos-sequoia-vanilla.nomad.hcl"
AGENT = REPO / "examples" / "agent.hcl"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n==> {title}")


async def print_events(stream: SimStream) -> None:
    async for event in stream:
        say(f"    [task event] {event['task_name']}: {event['message']}")


async def wait_for(check: Callable[[], bool], seconds: float) -> None:
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.1)


async def launch(sim: NomadSim, fake: FakeTart, log: Path) -> dict[str, Any]:
    launched = await sim.call("launch", cmd=plugin_command(), env=fake.env(), log_file=str(log))
    await sim.call("set_config", hcl=AGENT.read_text(), with_nomad_config=True)
    return launched


async def demo(workdir: Path) -> None:
    fake = FakeTart(workdir / "tart-home", workdir)
    fake.add_image(
        MACOS_IMAGE,
        os="darwin",
        mac="7e:3a:51:00:00:01",
        download_size=2_500_000_000,
        pull_speed=900_000_000,
    )
    fake.set_knobs("nomad-*", boot_delay=1, log_rate=3)
    log = workdir / "plugin.log"
    try:
        async with open_nomadsim() as sim:
            step("Nomad agent starts and launches the plugin from plugin_dir")
            launched = await launch(sim, fake, log)
            info = await sim.call("plugin_info")
            say(f"    handshake in {launched['handshake_seconds']:.2f}s, pid {launched['pid']}")
            say(f"    driver {info['name']!r} version {info['plugin_version']}")
            fingerprints = await sim.open_stream("fingerprint")
            with trio.fail_after(15):
                first = await fingerprints.receive()
            attrs = {k: next(iter(v.values())) for k, v in first["attributes"].items()}
            say(f"    fingerprint: {first['health']} ({first['health_description']})")
            say(f"    node attributes: driver.tart.version = {attrs.get('driver.tart.version')}")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(print_events, await sim.open_stream("task_events"))

                step(f"nomad job run {JOB.relative_to(REPO)}")
                alloc = str(uuid.uuid4())
                task = {
                    "alloc_id": alloc,
                    "env": {"SSH_PASSWORD": "admin"},
                    "resources": {
                        "cpu_shares": 8000,
                        "memory_mb": 10240,
                        "cpuset_cpus": "0,1,2,3,4,5,6,7",
                    },
                }
                started = await sim.call(
                    "start_task",
                    task=task,
                    job_file=str(JOB),
                    create_alloc_dir=True,
                    nomad_vars={"nomad/jobs/macos-sequoia-vanilla": {"ssh_password": "admin"}},
                )
                task_id = started["task_id"]
                say(
                    f"    task running after {started['seconds']:.1f}s; handle state "
                    f"{started['handle']['state']}"
                )
                status = await sim.call("inspect_task", task_id=task_id)
                attrs = status["driver"]["attributes"]
                say(f"    VM {attrs['vm_name']} at {attrs['ip']}")
                say(f"    tart run argv: {' '.join(fake.calls_of('run')[0])}")

                step("nomad alloc logs <alloc> vm   (guest syslog over SSH)")
                stdout_log = Path(started["stdout_log"])
                await wait_for(
                    lambda: stdout_log.exists() and len(stdout_log.read_text().splitlines()) >= 4,
                    30,
                )
                for line in stdout_log.read_text().splitlines()[-4:]:
                    say(f"    {line}")

                caps = (await sim.call("capabilities"))["capabilities"]
                if caps.get("exec"):
                    step("nomad alloc exec -task vm <alloc> uname -a")
                    result = await sim.call(
                        "exec_task", task_id=task_id, command=["uname", "-a"], timeout_seconds=10
                    )
                    say("    " + base64.b64decode(result["stdout_b64"]).decode().strip())
                    say(f"    exit code {result['exit_code']}")

                step("The Nomad agent restarts: the plugin is SIGKILLed and launched again")
                vm_pids = fake.running_vms()
                await sim.call("sigkill")
                say(f"    plugin killed; VM still running: {fake.running_vms() == vm_pids}")
                await launch(sim, fake, log)
                nursery.start_soon(print_events, await sim.open_stream("task_events"))
                await sim.call("recover_task", handle=started["handle"], drop_driver_config=True)
                say(
                    f"    recovered; same tart run process: {fake.running_vms() == vm_pids}; "
                    f"tart run calls so far: {len(fake.calls_of('run'))}"
                )

                step("nomad job stop (kill_timeout 5s, kill_signal SIGINT)")
                stopped = await sim.call(
                    "stop_task", task_id=task_id, timeout_seconds=5, signal="SIGINT"
                )
                waited = await sim.call("wait_task", task_id=task_id)
                say(
                    f"    stopped in {stopped['seconds']:.1f}s; exit code "
                    f"{waited['result']['exit_code']}"
                )
                await sim.call("destroy_task", task_id=task_id)
                left = fake.tart("list", "--quiet", "--source", "local").stdout.split()
                say(f"    destroyed; VMs left in `tart list`: {left or 'none'}")
                nursery.cancel_scope.cancel()
            killed = await sim.call("kill")
            step(f"Agent shutdown: plugin exited gracefully: {killed['graceful']}")
    except NomadSimError as exc:
        say(f"\nFAILED: {exc}")
        raise SystemExit(1) from exc
    finally:
        fake.cleanup()


def main() -> None:
    reason = needs_guest_reason()
    if reason is not None:
        sys.exit(f"the demo needs real SSH guests: {reason}")
    with tempfile.TemporaryDirectory(prefix="tart-demo-") as tmp:
        trio.run(demo, Path(tmp))
    say("\nDemo finished.")


if __name__ == "__main__":
    main()
