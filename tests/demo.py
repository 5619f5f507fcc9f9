"""The demo: one job's whole life, driven the way Nomad drives the plugin.

Run with ``scripts/dev.sh demo`` (root, Linux). The Nomad side is the Go stand-in on
the real go-plugin/go-cty/hcl libraries; Tart is the fake host whose VMs are real SSH
guests. Everything printed is what a Nomad user or operator would see.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import re
import sys
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from tests.conformance.nomadsim import NomadSim, NomadSimError, SimStream, open_nomadsim
from tests.faketart.fixtures import MACOS_IMAGE, FakeTart, needs_guest_reason
from tests.plugin_process import plugin_command

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "examples" / "macos-sequoia-vanilla.nomad.hcl"
CI_JOB = REPO / "examples" / "ci-build.nomad.hcl"
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

                await ci_job(sim, fake, workdir, log, nursery)
                await warm_jobs(sim, fake, workdir)
                nursery.cancel_scope.cancel()
            killed = await sim.call("kill")
            step(f"Agent shutdown: plugin exited gracefully: {killed['graceful']}")
    except NomadSimError as exc:
        say(f"\nFAILED: {exc}")
        raise SystemExit(1) from exc
    finally:
        fake.cleanup()


SOURCES = {
    "src/configure": "#!/bin/sh\necho 'checking for cc... cc'\n",
    "src/build": (
        "#!/bin/sh\nmkdir -p dist\n"
        'for i in $(seq 1 40); do echo "[$i/40] compiling unit$i.c"; sleep 0.1; done\n'
        "echo built > dist/app\n"
    ),
    "src/test": "#!/bin/sh\necho '40 tests passed'\n",
}


def sources_tarball(path: Path) -> None:
    """The artifact the CI example fetches: src/ with configure, build and test."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in SOURCES.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def serving(directory: Path) -> Iterator[str]:
    """A local web server for the artifact (the job's source_url)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def ci_job(
    sim: NomadSim, fake: FakeTart, workdir: Path, log: Path, nursery: trio.Nursery
) -> None:
    """A batch job: a build in a fresh VM, through an agent restart, to its exit code."""
    served = workdir / "served"
    served.mkdir()
    sources_tarball(served / "sources.tar.gz")
    step(f'nomad job run {CI_JOB.relative_to(REPO)}   (type = "batch", command = build.sh)')
    with serving(served) as url:
        task = {
            "alloc_id": str(uuid.uuid4()),
            "env": {},
            "resources": {"cpu_shares": 4000, "memory_mb": 8192, "cpuset_cpus": "0,1,2,3"},
        }
        started = await sim.call(
            "start_task",
            task=task,
            job_file=str(CI_JOB),
            vars={"source_url": f"{url}/sources.tar.gz"},
            nomad_vars={"nomad/jobs/ci-build": {"ssh_password": "admin"}},
            create_alloc_dir=True,
        )
    task_id = started["task_id"]
    stdout_log = Path(started["stdout_log"])
    say(f"    task running after {started['seconds']:.1f}s: the artifact and the template")
    say("    are in local/, and the build runs in the VM")

    step("nomad alloc logs -f <alloc> build")
    await wait_for(lambda: "compiling unit5.c" in stdout_log.read_text(), 30)
    for line in stdout_log.read_text().splitlines():
        say(f"    {line}")

    step("The Nomad agent restarts in the middle of the build: the plugin is SIGKILLed")
    await sim.call("sigkill")
    shown = len(stdout_log.read_text().splitlines())
    say(f"    plugin killed after {shown} lines of output; the build goes on in the guest")
    await launch(sim, fake, log)
    nursery.start_soon(print_events, await sim.open_stream("task_events"))
    await sim.call("recover_task", handle=started["handle"], drop_driver_config=True)
    say("    recovered; the output resumes where it stopped:")
    waited = await sim.call("wait_task", task_id=task_id)
    lines = stdout_log.read_text().splitlines()
    for line in [*lines[shown : shown + 3], "...", *lines[-3:]]:
        say(f"    {line}")
    units = [int(n) for n in re.findall(r"compiling unit(\d+)\.c", "\n".join(lines))]
    say(f"    units compiled: {len(units)}; no gap and no repeat: {units == list(range(1, 41))}")
    say(f"    exit code {waited['result']['exit_code']}")
    result = Path(started["alloc_dir"]) / "alloc" / "data" / "app.tar.gz"
    say(f"    nomad alloc fs <alloc> alloc/data/app.tar.gz: {result.stat().st_size} bytes")
    vm = f"nomad-{task['alloc_id']}"
    await wait_for(lambda: vm not in fake.running_vms(), 30)
    say(f"    VM {vm} powered off")
    await sim.call("destroy_task", task_id=task_id)
    left = fake.tart("list", "--quiet", "--source", "local").stdout.split()
    say(f"    destroyed; VMs left in `tart list`: {left or 'none'}")


WARM_JOB = REPO / "examples" / "ci-warm.nomad.hcl"
WARM_POOL = """
    warm_dir = "{warm_dir}"
    warm_pool {{
      name   = "sequoia"
      image  = "{image}"
      cores  = 4
      memory = 8192
    }}
"""


async def warm_jobs(sim: NomadSim, fake: FakeTart, workdir: Path) -> None:
    """Warm start: a golden built in the background, a job resumed from it, a fallback."""
    step("The operator adds a warm pool to the agent (warm_pool { }); a golden VM is built")
    fake.set_knobs("nomad-warm-*", boot_delay=1, suspend_seconds=1)
    agent = AGENT.read_text().replace(
        "  config {\n",
        "  config {\n" + WARM_POOL.format(warm_dir=workdir / "warm", image=MACOS_IMAGE),
        1,
    )
    await sim.call("set_config", hcl=agent, with_nomad_config=True)
    fingerprints = await sim.open_stream("fingerprint")
    began = trio.current_time()
    with trio.fail_after(120):
        while True:
            attributes = (await fingerprints.receive()).get("attributes", {})
            if str(attributes.get("driver.tart.warm.sequoia.ready", {}).get("int_val")) == "1":
                break
    await sim.close_stream(fingerprints)
    say(f"    booted, suspended and self-tested in {trio.current_time() - began:.0f}s")
    say("    node attribute: driver.tart.warm.sequoia.ready = 1")
    for fallback in (False, True):
        if fallback:
            step("The same job again, on a host where the restore is refused: it boots cold")
            fake.set_knobs("nomad-????????-*", restore_failure=True)
        else:
            step(f"nomad job run {WARM_JOB.relative_to(REPO)}   (warm_start = true)")
        task = {
            "alloc_id": str(uuid.uuid4()),
            "env": {},
            "resources": {"cpu_shares": 4000, "memory_mb": 8192, "cpuset_cpus": "0,1,2,3"},
        }
        started = await sim.call(
            "start_task", task=task, job_file=str(WARM_JOB), create_alloc_dir=True
        )
        say(f"    StartTask answered after {started['seconds']:.1f}s")
        waited = await sim.call("wait_task", task_id=started["task_id"])
        for line in Path(started["stdout_log"]).read_text().splitlines():
            say(f"    {line}")
        say(f"    exit code {waited['result']['exit_code']}")
        await sim.call("destroy_task", task_id=started["task_id"])
    fake.set_knobs("nomad-????????-*", restore_failure=None)


def main() -> None:
    reason = needs_guest_reason()
    if reason is not None:
        sys.exit(f"the demo needs real SSH guests: {reason}")
    with tempfile.TemporaryDirectory(prefix="tart-demo-") as tmp:
        trio.run(demo, Path(tmp))
    say("\nDemo finished.")


if __name__ == "__main__":
    main()
