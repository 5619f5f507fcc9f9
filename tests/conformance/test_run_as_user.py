"""A root plugin with ``tart_user``: a whole task life with tart run by that user.

The fake Tart host here belongs to another account (its TART_HOME is that user's) and
boots guests through the fake virtualization service, so inside the VM the shares are
exactly as readable as they are to the tart user.
"""

from __future__ import annotations

import grp
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import launch_args, live_supervisor_pids, plugin_log
from tests.conformance.nomadsim import NomadSim, NomadSimError
from tests.conformance.test_lifecycle import wait_for_text
from tests.conformance.test_operator import attr, fingerprint, macos_release
from tests.faketart.fixtures import (
    LINUX_IMAGE,
    MACOS_IMAGE,
    MANY_GROUPS,
    FakeTart,
    ensure_groups,
    ensure_user,
    fake_tart_for_user,
    needs_guest_reason,
    pid_alive,
)

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

USER = "nomad-tart-test"
SHARES = "/Volumes/My Shared Files"


@pytest.fixture
def user_host() -> Iterator[tuple[FakeTart, Any]]:
    user = ensure_user(USER)
    ensure_groups(USER, MANY_GROUPS)
    with fake_tart_for_user(user) as host:
        yield host, user


def _job(project: Path) -> str:
    return (
        'job "ci" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
        f'      config {{\n        url = "{MACOS_IMAGE}"\n        ssh_user = "admin"\n'
        '        ssh_password = "admin"\n'
        f'        directory {{\n          path = "{project}"\n          name = "project"\n'
        "          options {\n            readonly = true\n          }\n        }\n"
        "      }\n    }\n  }\n}\n"
    )


async def _launch(sim: NomadSim, host: FakeTart, log: Path, settings: str = "") -> None:
    """The plugin on a macOS 15.3.1 host with launchctl, as root with ``tart_user``."""
    macos = macos_release(host.scratch / "macos", "15.3.1")  # root plus a tart_user: fine
    path = f"{macos}:{host.host_dir}:{host.env()['PATH']}"
    await sim.call("launch", **launch_args(log, **host.env(PATH=path)))
    await _configure(sim, host, settings)


async def _configure(sim: NomadSim, host: FakeTart, settings: str = "") -> None:
    plugin = (
        'plugin "nomad-driver-tart" {\n  config {\n'
        f'    tart_user = "{USER}"\n    tart_home = "{host.home}"\n'
        f'    boot_timeout = "30s"\n{settings}  }}\n}}\n'
    )
    await sim.call("set_config", hcl=plugin, with_nomad_config=True)


async def _start(sim: NomadSim, job: str, alloc_dir: Path) -> dict[str, Any]:
    task = {
        "alloc_id": alloc_dir.name,
        "alloc_dir": str(alloc_dir),
        "env": {"SSH_PASSWORD": "admin"},
        "resources": {"cpu_shares": 4000, "memory_mb": 4096, "cpuset_cpus": "0,1,2,3"},
    }
    return await sim.call("start_task", task=task, create_alloc_dir=True, job_hcl=job)


def _alloc_dir(host: FakeTart) -> Path:
    """An allocation directory as Nomad leaves it before StartTask, secrets rendered."""
    alloc_dir = host.scratch / str(uuid.uuid4())
    secrets = alloc_dir / "vm" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "token").write_text("s3cret\n")
    (secrets / "token").chmod(0o600)  # a template with perms = "600", owned by root
    return alloc_dir


async def test_a_task_lives_and_dies_with_tart_run_by_the_tart_user(
    sim: NomadSim, user_host: tuple[FakeTart, Any], tmp_path: Path
) -> None:
    host, user = user_host
    project = host.scratch / "project"
    project.mkdir(mode=0o750)
    (project / "README").write_text("hello from the host\n")
    # Only the last of the user's 20 supplementary groups may read the share (macOS's
    # setgroups(2) takes 16): tart runs with every group of the user.
    os.chown(project, 0, grp.getgrnam(MANY_GROUPS[-1]).gr_gid)
    alloc_dir = _alloc_dir(host)
    await _launch(sim, host, tmp_path / "plugin.log")

    fp = await fingerprint(sim)
    assert fp["health"] == "HEALTHY" and attr(fp, "macos_version") == "15.3.1"
    assert attr(fp, "login_session") is False
    started = await _start(sim, _job(project), alloc_dir)
    task_id = started["task_id"]
    vm = f"nomad-{alloc_dir.name}"
    assert (host.home / "vms" / vm).stat().st_uid == user.pw_uid
    ip = (await sim.call("inspect_task", task_id=task_id))["driver"]["attributes"]["ip"]
    seen = host.ssh(ip, f"id -u; cat '{SHARES}/secrets/token' '{SHARES}/project/README'")
    assert seen.stdout == f"{user.pw_uid}\ns3cret\nhello from the host\n", seen.stderr
    token = alloc_dir / "vm" / "secrets" / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600, "nobody else gains access"
    await wait_for_text(Path(started["stdout_log"]), r"localhost \S+\[\d+\]")

    # The plugin restarts; the VM, run by the tart user, is reattached and not run again.
    await sim.call("sigkill")
    await _launch(sim, host, tmp_path / "plugin.log")
    await sim.call("recover_task", handle=started["handle"], drop_driver_config=True)
    assert host.ssh(ip, "true").returncode == 0

    await sim.call("stop_task", task_id=task_id, timeout_seconds=5, signal="SIGINT")
    waited = await sim.call("wait_task", task_id=task_id)
    assert waited["result"]["exit_code"] == 0 and not waited["err"]
    await sim.call("destroy_task", task_id=task_id)

    calls = host.calls()
    assert {c["argv"][0] for c in calls} >= {"clone", "set", "run", "list", "delete"}
    assert [c["argv"] for c in calls if c["argv"][0] == "run"] == [
        [
            "run",
            vm,
            "--no-graphics",
            f"--dir=secrets:{alloc_dir / 'vm' / 'secrets'}:ro",
            f"--dir=project:{project}:ro",
        ]
    ]
    for call in calls:
        assert call["uid"] == user.pw_uid, call["argv"]
        assert call["env"]["HOME"] == user.pw_dir and call["env"]["USER"] == USER
        assert call["env"]["TART_HOME"] == str(host.home)
    assert list((host.home / "vms").iterdir()) == []
    assert not [p for p in live_supervisor_pids() if _mine(p, host)]


async def test_a_directory_the_tart_user_cannot_read_is_refused_before_cloning(
    sim: NomadSim, user_host: tuple[FakeTart, Any], tmp_path: Path
) -> None:
    host, _user = user_host
    closed = host.scratch / "closed"
    closed.mkdir(mode=0o700)
    await _launch(sim, host, tmp_path / "plugin.log")
    with pytest.raises(NomadSimError) as refused:
        await _start(sim, _job(closed), _alloc_dir(host))
    assert "directory[0].path" in str(refused.value) and USER in str(refused.value)
    assert host.calls_of("clone") == []
    assert all("s3cret" not in str(line) for line in plugin_log(tmp_path / "plugin.log"))


def _mine(pid: int, host: FakeTart) -> bool:
    try:
        return str(host.home).encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _softnet_job() -> str:
    return (
        'job "ci" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
        f'      config {{\n        url = "{LINUX_IMAGE}"\n        ssh_user = "admin"\n'
        '        ssh_password = "admin"\n        network {\n          mode = "softnet"\n'
        "        }\n      }\n    }\n  }\n}\n"
    )


async def test_softnet_runs_for_the_tart_user_only_with_its_suid_bit(
    sim: NomadSim, user_host: tuple[FakeTart, Any], tmp_path: Path
) -> None:
    """tart run under the driver has no terminal, so Tart never sets softnet's SUID bit."""
    host, _user = user_host
    softnet = host.softnet_dir / "softnet"
    await _launch(sim, host, tmp_path / "plugin.log")
    fp = await fingerprint(sim)
    assert fp["health"] == "HEALTHY" and attr(fp, "softnet") is False
    fix = f"Fix: sudo chown root {softnet} && sudo chmod u+s {softnet}"
    assert (
        f"softnet and host networking are unavailable: softnet ({softnet}) cannot get "
        in (fp["health_description"])
    )
    assert fix in fp["health_description"]
    with pytest.raises(NomadSimError) as refused:
        await _start(sim, _softnet_job(), _alloc_dir(host))
    assert refused.value.recoverable is not True
    assert "network.mode: softnet networking needs softnet, which cannot run here" in (
        refused.value.message
    )
    assert fix in refused.value.message
    assert host.calls_of("clone") == []

    softnet.chmod(0o4755)  # the operator follows the advice (the file is root's already)
    assert attr(await fingerprint(sim), "softnet") is True
    started = await _start(sim, _softnet_job(), _alloc_dir(host))
    vm = f"nomad-{started['task_config']['alloc_id']}"
    assert host.runtime(vm)["network"] == "softnet"
    assert pid_alive(host.runtime(vm)["softnet_pid"]), "softnet runs beside the VM"
    await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=started["task_id"])


async def test_macos_guests_start_in_the_tart_users_login_session(
    sim: NomadSim, user_host: tuple[FakeTart, Any], tmp_path: Path
) -> None:
    """A root daemon that only setuids to tart_user runs tart outside its login session."""
    host, user = user_host
    host.set_image_knobs(MACOS_IMAGE, needs_login_session=True)  # a macOS 15.2+ guest
    host.login(user.pw_uid)
    await _launch(sim, host, tmp_path / "plugin.log")
    fp = await fingerprint(sim)
    assert fp["health"] == "HEALTHY" and attr(fp, "login_session") is True
    assert (
        f"tart runs as {USER} outside its login session, where macOS 15.2 and later guests "
        "fail to start: set run_in_login_session = true."
    ) in fp["health_description"]
    with pytest.raises(NomadSimError) as failed:
        await _start(sim, _job(host.scratch), _alloc_dir(host))
    assert "The virtual machine failed to start." in failed.value.message
    assert "run_in_login_session" in failed.value.message, "the error says where to look"
    assert list((host.home / "vms").iterdir()) == [], "the failed start left no VM"

    await _configure(sim, host, "    run_in_login_session = true\n")
    fp = await fingerprint(sim)
    assert "login session" not in fp["health_description"]
    started = await _start(sim, _job(host.scratch), _alloc_dir(host))
    await sim.call("stop_task", task_id=started["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=started["task_id"])

    host.logout(user.pw_uid)
    fp = await fingerprint(sim)
    assert attr(fp, "login_session") is False
    assert (
        f"{USER} has no GUI login session: macOS 15.2 and later guests fail"
        in (fp["health_description"])
    )


def _command_job(script: str) -> str:
    return (
        'job "ci" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
        f'      config {{\n        url = "{MACOS_IMAGE}"\n        ssh_user = "admin"\n'
        '        ssh_password = "admin"\n        command = "/bin/sh"\n'
        f'        args = ["-c", {json.dumps(script)}]\n      }}\n    }}\n  }}\n}}\n'
    )


BUILD = """
while [ ! -e "$NOMAD_ALLOC_DIR/data/go" ]; do sleep 0.1; done
cat "$NOMAD_TASK_DIR/config"
id -u > "$NOMAD_ALLOC_DIR/data/result.txt"
echo built > "$NOMAD_TASK_DIR/out.txt"
ln -s "$TARGET" "$NOMAD_TASK_DIR/planted-by-the-guest"
"""


async def test_a_command_reads_and_writes_local_and_alloc_as_the_tart_user(
    sim: NomadSim, user_host: tuple[FakeTart, Any], tmp_path: Path
) -> None:
    """The guest writes alloc/ and local/; nothing it leaves there steers the root plugin."""
    host, user = user_host
    alloc_dir = _alloc_dir(host)
    local = alloc_dir / "vm" / "local"
    local.mkdir(parents=True)
    (local / "config").write_text("from a template\n")
    (local / "config").chmod(0o600)  # a template with perms = "600", owned by root
    target = host.scratch / "root-only"
    target.write_text("root's\n")
    target.chmod(0o600)
    (local / "planted-on-the-host").symlink_to(target)
    await _launch(sim, host, tmp_path / "plugin.log")
    script = BUILD.replace("$TARGET", str(target))
    started = await _start(sim, _command_job(script), alloc_dir)
    # logmon copies the FIFO into the log file on its own time, and may still hold the
    # output when WaitTask answers: here it does. The log is read once logmon stopped with
    # the task (as Nomad's task runner stops it, which copies what the FIFO still holds).
    await sim.call("logmon", task_id=started["task_id"], stream="stdout", state="paused")
    (alloc_dir / "alloc" / "data" / "go").touch()
    with trio.fail_after(60):
        waited = await sim.call("wait_task", task_id=started["task_id"])
    assert waited["result"]["exit_code"] == 0, Path(started["stderr_log"]).read_text()
    result = alloc_dir / "alloc" / "data" / "result.txt"
    assert result.read_text() == f"{user.pw_uid}\n" and result.stat().st_uid == user.pw_uid
    assert (local / "out.txt").read_text() == "built\n"
    await sim.call("destroy_task", task_id=started["task_id"])
    assert Path(started["stdout_log"]).read_text() == "from a template\n"

    # Nomad restarts the task in the same allocation: local/ is walked again as root.
    again = await _start(sim, _command_job("true"), alloc_dir)
    with trio.fail_after(60):
        assert (await sim.call("wait_task", task_id=again["task_id"]))["result"]["exit_code"] == 0
    await sim.call("destroy_task", task_id=again["task_id"])
    assert (local / "planted-by-the-guest").is_symlink()
    info = target.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600), "no link was followed"
