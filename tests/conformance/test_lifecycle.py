"""A job's whole life through the Go stand-in and the fake Tart host."""

from __future__ import annotations

import base64
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import EXAMPLES, launch_args, plugin_log, until
from tests.conformance.nomadsim import NomadSim, NomadSimError, SimStream
from tests.faketart.fixtures import LINUX_IMAGE, MACOS_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

SEED_JOB = EXAMPLES / "macos-sequoia-vanilla.nomad.hcl"
PASSWORD = "admin"
#: The Nomad variable the seed example's template reads the SSH password from.
SEED_VARS = {"nomad/jobs/macos-sequoia-vanilla": {"ssh_password": PASSWORD}}
PLUGIN_CONFIG = 'plugin "nomad-driver-tart" {\n  config {\n    boot_timeout = "30s"\n  }\n}\n'


async def launch(sim: NomadSim, fake: FakeTart, tmp_path: Path, **env: str) -> Path:
    """Launch the plugin as Nomad's real instance would be (SetConfig with nomad_config)."""
    log = tmp_path / "plugin.log"
    await sim.call("launch", **launch_args(log, **fake.env(), **env))
    await sim.call("set_config", hcl=PLUGIN_CONFIG, with_nomad_config=True)
    return log


async def start(
    sim: NomadSim,
    job_hcl: str | None = None,
    *,
    job_file: Path = SEED_JOB,
    cores: int = 4,
    memory_mb: int = 4096,
    alloc_id: str | None = None,
    task_name: str | None = None,
    user: str = "",
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    args: dict[str, Any] = {"job_hcl": job_hcl} if job_hcl else {"job_file": str(job_file)}
    if task_name:
        args["task_name"] = task_name
    task: dict[str, Any] = {
        "alloc_id": alloc_id or str(uuid.uuid4()),
        "env": {"SSH_PASSWORD": PASSWORD},
        "resources": {
            "cpu_shares": 1000 * cores,
            "memory_mb": memory_mb,
            "cpuset_cpus": ",".join(str(i) for i in range(cores)),
            "ports": ports or [],
        },
        "user": user,
    }
    return await sim.call(
        "start_task", task=task, create_alloc_dir=True, nomad_vars=SEED_VARS, **args
    )


async def collect(stream: SimStream, into: list[dict[str, Any]]) -> None:
    async for msg in stream:
        into.append(msg)


async def wait_for_text(path: Path, pattern: str, seconds: float = 20) -> str:
    with trio.fail_after(seconds):
        while True:
            text = path.read_text(errors="replace") if path.exists() else ""
            if re.search(pattern, text):
                return text
            await trio.sleep(0.1)


async def stop_and_destroy(sim: NomadSim, fake: FakeTart, *tasks: dict[str, Any]) -> None:
    """Stop and destroy each started task; then no VM is left."""
    for task in tasks:
        await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
        await sim.call("destroy_task", task_id=task["task_id"])
    assert vm_names(fake) == []


def vm_names(fake: FakeTart) -> list[str]:
    return list(fake.tart("list", "--quiet", "--source", "local").stdout.split())


async def test_seed_job_runs_logs_stops_and_is_destroyed(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.add_image(
        MACOS_IMAGE,
        os="darwin",
        mac="7e:3a:51:00:00:01",
        download_size=50_000_000,
        pull_speed=50_000_000,
    )
    await launch(sim, fake_tart, tmp_path)
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        ports = [{"label": "http", "value": 25080, "to": 8080}, {"label": "vnc", "value": 25900}]
        started = await start(sim, cores=8, memory_mb=10240, user="bob", ports=ports)
        task_id = started["task_id"]
        alloc_id = started["task_config"]["alloc_id"]
        vm = f"nomad-{alloc_id}"
        handle = started["handle"]
        assert handle["state"] == "RUNNING" and handle["version"] >= 1
        assert handle["config"]["id"] == task_id
        assert base64.b64decode(handle["config"]["msgpack_driver_config"])

        secrets = Path(started["alloc_dir"]) / "vm" / "secrets"
        (secrets / "secrets.env").write_text("SSH_PASSWORD=admin\n")
        os.chmod(secrets, 0o755)
        os.chmod(secrets / "secrets.env", 0o644)
        ip = (await sim.call("inspect_task", task_id=task_id))["driver"]["attributes"]["ip"]
        assert started["network_override"] == {
            "addr": ip,
            "port_map": {"http": 8080, "vnc": 25900},  # the guest's ports: `to`, else the host's
            "auto_advertise": False,
        }
        seen = fake_tart.ssh(ip, "cat '/Volumes/My Shared Files/secrets/secrets.env'")
        assert seen.stdout == "SSH_PASSWORD=admin\n"

        await wait_for_text(Path(started["stdout_log"]), r"localhost \S+\[\d+\]")

        runs = fake_tart.calls_of("run")
        assert runs == [["run", vm, "--no-graphics", f"--dir=secrets:{secrets}:ro"]]
        assert fake_tart.calls_of("set") == [
            ["set", vm, "--random-mac", "--cpu", "8", "--memory", "10240", "--disk-size", "60"]
        ]

        stopped = await sim.call("stop_task", task_id=task_id, timeout_seconds=5, signal="SIGINT")
        assert stopped["seconds"] < 5
        waited = await sim.call("wait_task", task_id=task_id)
        assert waited["result"]["exit_code"] == 0 and not waited["err"]
        await sim.call("destroy_task", task_id=task_id)
        assert vm not in vm_names(fake_tart)
        await sim.call("destroy_task", task_id=task_id)  # idempotent
        nursery.cancel_scope.cancel()
    messages = [e["message"] for e in events]
    assert any(m.startswith(f"Downloading image {MACOS_IMAGE}") for m in messages)
    assert any(m.startswith(f"Downloaded image {MACOS_IMAGE}") for m in messages)
    assert any(m == f"VM {vm} started" for m in messages)
    assert any(m.startswith("VM reachable at 127.") for m in messages)
    assert "Grew the guest's system container disk0s2 from 49.5 GB to 59.5 GB" in " ".join(
        messages
    ), "disk_size = 60 reached macOS"
    assert any(m.startswith("The task's user 'bob' is not used") for m in messages)
    assert all(e["alloc_id"] == alloc_id and e["task_name"] == "vm" for e in events)


async def test_disk_size_that_macos_cannot_use_is_reported_and_the_task_runs(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        vanilla = _variant("disk_size = 60").replace(
            LINUX_IMAGE, "ghcr.io/cirruslabs/macos-sequoia-vanilla:latest"
        )
        started = await start(sim, vanilla)
        linux = await start(sim, _variant("disk_size = 30"))
        nursery.cancel_scope.cancel()
    messages = [e["message"] for e in events if e["task_name"] == "vm"]
    (reported,) = [m for m in messages if "macOS cannot use" in m]
    assert "disk0s3 (Apple_APFS_Recovery) follows the system container disk0s2" in reported
    assert not any("Grew" in m or "Could not grow" in m for m in messages)
    assert (await sim.call("inspect_task", task_id=started["task_id"]))["task"]["state"] == (
        "RUNNING"
    )
    await stop_and_destroy(sim, fake_tart, started, linux)


def _variant(config: str) -> str:
    return (
        'job "v" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
        f'      config {{\n        url = "{LINUX_IMAGE}"\n        ssh_user = "admin"\n'
        f'        ssh_password = "admin"\n{config}\n      }}\n    }}\n  }}\n}}\n'
    )


@pytest.mark.parametrize(
    ("config", "flags"),
    [
        ('network {\n mode = "bridged"\n bridged_interface = "en0"\n}', ["--net-bridged", "en0"]),
        (
            'network {\n softnet_allow = ["192.168.0.0/24", "10.0.0.0/8"]\n'
            ' softnet_expose = ["2222:22", "8080:80"]\n}',
            [
                "--net-softnet",
                "--net-softnet-allow",
                "192.168.0.0/24,10.0.0.0/8",
                "--net-softnet-expose",
                "2222:22,8080:80",
            ],
        ),
        ('network {\n mode = "host"\n}', ["--net-host"]),
        ('network {\n mode = "shared"\n}', []),
        (
            'root_disk {\n readonly = true\n caching_mode = "cached"\n sync_mode = "none"\n}',
            ["--root-disk-opts=ro,caching=cached,sync=none"],
        ),
        ("root_disk {\n}", []),
        ("show_ui = true", None),
    ],
)
async def test_tart_run_argv_matches_the_seed(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path, config: str, flags: list[str] | None
) -> None:
    await launch(sim, fake_tart, tmp_path)
    started = await start(sim, _variant(config))
    vm = f"nomad-{started['task_config']['alloc_id']}"
    secrets = Path(started["alloc_dir"]) / "vm" / "secrets"
    (run,) = fake_tart.calls_of("run")
    if flags is None:  # show_ui: a window, so no --no-graphics
        assert run == ["run", vm, f"--dir=secrets:{secrets}:ro"]
    else:
        assert run == ["run", vm, "--no-graphics", f"--dir=secrets:{secrets}:ro", *flags]
    await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=started["task_id"])


async def test_directories_are_shared_as_documented(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    shared = {name: tmp_path / "host" / name for name in ("assets", "cache", "build")}
    for name, path in shared.items():
        path.mkdir(parents=True)
        (path / "hello.txt").write_text(f"from {name}\n")
        os.chmod(path, 0o755)
        os.chmod(path / "hello.txt", 0o644)
    job = (EXAMPLES / "directories.nomad.hcl").read_text()
    job = job.replace("/Users/me/project/assets", str(shared["assets"]))
    job = job.replace("/Users/me/cache", str(shared["cache"]))
    job = job.replace("/Users/me/project/build", str(shared["build"]))
    await launch(sim, fake_tart, tmp_path)
    started = await start(sim, job)
    vm = f"nomad-{started['task_config']['alloc_id']}"
    secrets = Path(started["alloc_dir"]) / "vm" / "secrets"
    (run,) = fake_tart.calls_of("run")
    assert run == [
        "run",
        vm,
        "--no-graphics",
        f"--dir=secrets:{secrets}:ro",
        f"--dir=assets:{shared['assets']}:ro,tag=assets",
        f"--dir=cache:{shared['cache']}",
        f"--dir=build:{shared['build']}",
    ]
    ip = (await sim.call("inspect_task", task_id=started["task_id"]))["driver"]["attributes"]
    out = fake_tart.ssh(
        ip["ip"],
        "cat '/Volumes/My Shared Files/cache/hello.txt' '/Volumes/My Shared Files/build/hello.txt'",
    )
    assert out.stdout == "from cache\nfrom build\n"
    await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=started["task_id"])
    assert vm not in vm_names(fake_tart)


async def test_invalid_config_fails_before_anything_is_cloned(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    with pytest.raises(NomadSimError) as caught:
        await start(sim, _variant('network {\n mode = "bridged"\n}'))
    assert "network.bridged_interface" in caught.value.message
    assert caught.value.recoverable is not True
    assert fake_tart.calls_of("clone") == []


async def test_guest_shutdown_ends_the_task_with_exit_0(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    started = await start(sim, _variant(""))
    ip = (await sim.call("inspect_task", task_id=started["task_id"]))["driver"]["attributes"]
    fake_tart.ssh(ip["ip"], "sudo shutdown -h now")
    with trio.fail_after(20):
        waited = await sim.call("wait_task", task_id=started["task_id"])
    assert waited["result"]["exit_code"] == 0 and not waited["err"]
    await sim.call("destroy_task", task_id=started["task_id"])


async def test_crashed_tart_run_ends_the_task_with_its_exit_code(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.set_knobs("nomad-*", crash_exit_code=3)
    await launch(sim, fake_tart, tmp_path)
    started = await start(sim, _variant(""))
    fake_tart.set_knobs("nomad-*", crash_after=0)  # the VM is up: it crashes now
    with trio.fail_after(20):
        waited = await sim.call("wait_task", task_id=started["task_id"])
    assert waited["result"]["exit_code"] == 3
    await sim.call("destroy_task", task_id=started["task_id"])


async def test_third_macos_vm_is_a_recoverable_readable_error(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    first = await start(sim)
    second = await start(sim)
    with pytest.raises(NomadSimError) as caught:
        await start(sim)
    assert caught.value.recoverable is True
    assert "already runs 2 macOS VMs" in caught.value.message
    assert "max_macos_vms is 2" in caught.value.message
    assert len(vm_names(fake_tart)) == 2, "the failed task's clone was rolled back"
    await stop_and_destroy(sim, fake_tart, first, second)


async def test_two_tasks_of_one_allocation_run_side_by_side(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    alloc = str(uuid.uuid4())
    job = (
        _variant("")
        .replace('task "vm"', 'task "one"')
        .replace(
            "  }\n}\n",
            '    task "two" {\n      driver = "tart"\n      config {\n'
            f'        url = "{LINUX_IMAGE}"\n        ssh_user = "admin"\n'
            '        ssh_password = "admin"\n      }\n    }\n  }\n}\n',
            1,
        )
    )
    one = await start(sim, job, alloc_id=alloc, task_name="one")
    two = await start(sim, job, alloc_id=alloc, task_name="two")
    names = {
        (await sim.call("inspect_task", task_id=t["task_id"]))["driver"]["attributes"]["vm_name"]
        for t in (one, two)
    }
    assert names == {f"nomad-{alloc}", f"nomad-{alloc}-two"}
    await stop_and_destroy(sim, fake_tart, one, two)


async def test_a_task_restarted_after_its_vm_ended_gets_a_fresh_clone(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    alloc = str(uuid.uuid4())
    vm = f"nomad-{alloc}"
    first = await start(sim, _variant(""), alloc_id=alloc)
    ip = (await sim.call("inspect_task", task_id=first["task_id"]))["driver"]["attributes"]["ip"]
    assert fake_tart.ssh(ip, "touch ~/left-by-the-first-run").returncode == 0
    fake_tart.tart("stop", vm)  # the VM ends outside Nomad
    with trio.fail_after(20):
        waited = await sim.call("wait_task", task_id=first["task_id"])
    assert waited["result"]["exit_code"] == 0
    # Nomad's restart: the old handle is destroyed (force), then the task starts again.
    await sim.call("destroy_task", task_id=first["task_id"], force=True)
    second = await start(sim, _variant(""), alloc_id=alloc)
    ip = (await sim.call("inspect_task", task_id=second["task_id"]))["driver"]["attributes"]["ip"]
    assert (await sim.call("inspect_task", task_id=second["task_id"]))["driver"]["attributes"][
        "vm_name"
    ] == vm
    assert fake_tart.ssh(ip, "test -e ~/left-by-the-first-run").returncode == 1
    assert len(fake_tart.calls_of("clone")) == 2
    await stop_and_destroy(sim, fake_tart, second)


async def test_a_log_command_missing_in_the_guest_is_reported_once_not_retried(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path)
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        started = await start(sim, _variant('log_command = ["/usr/bin/no-such-log"]'))
        vm = f"nomad-{started['task_config']['alloc_id']}"
        console = fake_tart.vm_dir(vm) / ".faketart" / "console.log"

        def stopped() -> list[str]:
            return [e["message"] for e in events if e["message"].startswith("Log streaming")]

        await until(stopped)
        logins = console.read_text(errors="replace").count("Accepted password")
        await trio.sleep(3)  # a window in which a retrying pump would log in again and again
        assert console.read_text(errors="replace").count("Accepted password") == logins
        nursery.cancel_scope.cancel()
    (message,) = stopped()
    assert "'/usr/bin/no-such-log' cannot run in the guest (exit code 127)" in message
    assert "journalctl" in message
    await stop_and_destroy(sim, fake_tart, started)


async def test_a_vm_left_over_under_the_tasks_name_is_removed_not_cloned_over(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """`tart clone` overwrites silently, even a running VM: the driver removes it first."""
    await launch(sim, fake_tart, tmp_path)
    alloc = str(uuid.uuid4())
    vm = f"nomad-{alloc}"
    fake_tart.make_vm(vm, LINUX_IMAGE)
    old, old_ip = await trio.to_thread.run_sync(fake_tart.start_vm, vm)
    assert fake_tart.ssh(old_ip, "touch ~/left-over").returncode == 0
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        started = await start(sim, _variant(""), alloc_id=alloc)
        nursery.cancel_scope.cancel()
    assert old.returncode is not None, "the leftover's tart run was stopped"
    ip = (await sim.call("inspect_task", task_id=started["task_id"]))["driver"]["attributes"]["ip"]
    assert fake_tart.ssh(ip, "test -e ~/left-over").returncode == 1, "a fresh clone"
    assert any(e["message"].startswith(f"Removing VM {vm} left over") for e in events)
    await stop_and_destroy(sim, fake_tart, started)


async def test_a_runtime_directory_planted_in_the_task_directory_is_refused(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """Nomad's task directory is world-writable: a symlink there must not steer root."""
    await launch(sim, fake_tart, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    alloc_dir = tmp_path / "alloc" / str(uuid.uuid4())
    (alloc_dir / "vm").mkdir(parents=True)
    (alloc_dir / "vm" / ".tart-driver").symlink_to(elsewhere)
    task = {
        "alloc_id": alloc_dir.name,
        "alloc_dir": str(alloc_dir),
        "env": {"SSH_PASSWORD": PASSWORD},
        "resources": {"cpu_shares": 2000, "memory_mb": 2048, "cpuset_cpus": "0,1"},
    }
    with pytest.raises(NomadSimError) as refused:
        await sim.call("start_task", task=task, create_alloc_dir=True, job_hcl=_variant(""))
    assert ".tart-driver exists but is not the driver's own directory" in str(refused.value)
    assert list(elsewhere.iterdir()) == []
    assert fake_tart.calls_of("clone") == []


async def test_no_secret_reaches_logs_events_errors_or_argv(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    secret_ssh, secret_registry = "ssh-S3CRET-0042", "registry-T0KEN-0042"
    for tag in ("16", "17"):
        fake_tart.add_image(
            f"registry.example.com/ci/macos-xcode:{tag}",
            os="linux",
            password=secret_ssh,
            credentials={"username": "ci-bot", "password": secret_registry},
        )
    log = await launch(sim, fake_tart, tmp_path)
    events: list[dict[str, Any]] = []
    job = (
        (EXAMPLES / "private-registry.nomad.hcl")
        .read_text()
        .replace('ssh_password = "admin"', 'ssh_password = "${SSH_PASSWORD}"')
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        task = {
            "alloc_id": str(uuid.uuid4()),
            "env": {"SSH_PASSWORD": secret_ssh, "REGISTRY_TOKEN": secret_registry},
            "resources": {"cpu_shares": 500, "memory_mb": 2048},
        }
        token = {"nomad/jobs/tart-private-image": {"token": secret_registry}}
        started = await sim.call(
            "start_task", task=task, job_hcl=job, create_alloc_dir=True, nomad_vars=token
        )
        bad = dict(
            task,
            alloc_id=str(uuid.uuid4()),
            env={"SSH_PASSWORD": secret_ssh, "REGISTRY_TOKEN": "wrong"},
        )
        with pytest.raises(NomadSimError) as caught:
            await sim.call(
                "start_task",
                task=bad,
                create_alloc_dir=True,
                job_hcl=job.replace("macos-xcode:16", "macos-xcode:17"),
                nomad_vars={"nomad/jobs/tart-private-image": {"token": "wrong"}},
            )
        errors = [str(caught.value)]
        await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5)
        await sim.call("destroy_task", task_id=started["task_id"])
        nursery.cancel_scope.cancel()
    texts = {
        "plugin stderr": log.read_text() + Path(f"{log}.raw").read_text(),
        "events": repr(events),
        "errors": repr(errors),
        "argv": repr([c["argv"] for c in fake_tart.calls()]),
    }
    for where, text in texts.items():
        for secret in (secret_ssh, secret_registry):
            assert secret not in text, f"a secret leaked into the {where}"
    assert plugin_log(log), "the plugin did log"
