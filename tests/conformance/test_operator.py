"""Operator controls and an honest fingerprint."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tart_trio._driver.fingerprint import ROOT_ON_MACOS_15
from tests.conformance.conftest import launch_args, plugin_log
from tests.conformance.nomadsim import NomadSim, NomadSimError
from tests.conformance.test_lifecycle import _variant, start
from tests.faketart.fixtures import LINUX_IMAGE, MACOS_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")


def plugin_hcl(**settings: str) -> str:
    body = "".join(f"    {key} = {value}\n" for key, value in settings.items())
    return f'plugin "nomad-driver-tart" {{\n  config {{\n{body}  }}\n}}\n'


async def launch(sim: NomadSim, fake: FakeTart, tmp_path: Path, hcl: str, **env: str) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log", **fake.env(**env)))
    await sim.call("set_config", hcl=hcl, with_nomad_config=True)


def job(url: str = LINUX_IMAGE, extra: str = "") -> str:
    return _variant(extra).replace(LINUX_IMAGE, url)


async def refused(sim: NomadSim, job_hcl: str) -> str:
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job_hcl)
    assert caught.value.recoverable is not True
    return caught.value.message


async def test_allowlists_refuse_what_is_outside_and_allow_what_is_inside(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    allowed_dir = tmp_path / "shared"
    allowed_dir.mkdir()
    await launch(
        sim,
        fake_tart,
        tmp_path,
        plugin_hcl(
            allowed_images='["ghcr.io/cirruslabs/ubuntu:*"]',
            allowed_directories=f'["{allowed_dir}"]',
            allowed_network_modes='["shared", "softnet"]',
        ),
    )
    message = await refused(sim, job(MACOS_IMAGE))
    assert "url" in message and "allowed images" in message
    message = await refused(sim, job(extra='directory {\n path = "/etc"\n}'))
    assert "directory[0].path" in message and str(allowed_dir) in message
    message = await refused(sim, job(extra=f'directory {{\n path = "{allowed_dir}/../.."\n}}'))
    assert "directory[0].path" in message
    message = await refused(
        sim, job(extra='network {\n mode = "bridged"\n bridged_interface = "en0"\n}')
    )
    assert "network.mode" in message and "shared, softnet" in message
    assert fake_tart.calls_of("clone") == [], "nothing was cloned for a refused job"

    ok = await start(
        sim,
        job(
            extra=f'directory {{\n path = "{allowed_dir}"\n}}\n'
            'network {\n softnet_allow = ["10.0.0.0/8"]\n}'
        ),
    )
    await sim.call("stop_task", task_id=ok["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=ok["task_id"])


async def test_local_and_nomad_vms_cannot_be_cloned_by_default(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.make_vm("golden-image", LINUX_IMAGE)
    other_task_vm = f"nomad-{uuid.uuid4()}"
    fake_tart.make_vm(other_task_vm, LINUX_IMAGE)
    await launch(sim, fake_tart, tmp_path, plugin_hcl())
    assert "local VM" in await refused(sim, job("golden-image"))
    assert "another task's VM" in await refused(sim, job(other_task_vm))
    await sim.call(
        "set_config",
        hcl=plugin_hcl(allowed_images='["golden-*", "nomad-*"]'),
        with_nomad_config=True,
    )
    assert "another task's VM" in await refused(sim, job(other_task_vm))
    ok = await start(sim, job("golden-image"))
    await sim.call("stop_task", task_id=ok["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=ok["task_id"])
    for name in ("golden-image", other_task_vm):
        fake_tart.tart("delete", name)


async def fingerprint(sim: NomadSim) -> dict[str, Any]:
    stream = await sim.open_stream("fingerprint")
    with trio.fail_after(20):
        first: dict[str, Any] = await stream.receive()
    await sim.call("close_stream", stream=stream.id)
    return first


def attr(fp: dict[str, Any], key: str) -> Any:
    value = fp["attributes"][f"driver.tart.{key}"]
    return next(v for k, v in value.items() if k != "unit")


async def test_macos_slots_count_only_running_macos_guests(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path, plugin_hcl())
    fp = await fingerprint(sim)
    assert fp["health"] == "HEALTHY"
    assert int(attr(fp, "macos_vm_slots")) == 2 and int(attr(fp, "macos_vm_slots_free")) == 2
    assert attr(fp, "version") == "2.35.0"
    ours = await start(sim, job(MACOS_IMAGE))
    linux = await start(sim, job(LINUX_IMAGE))
    assert int(attr(await fingerprint(sim), "macos_vm_slots_free")) == 1
    fake_tart.make_vm("outside-nomad", MACOS_IMAGE)
    fake_tart.start_vm("outside-nomad")
    assert int(attr(await fingerprint(sim), "macos_vm_slots_free")) == 0
    for task in (ours, linux):
        await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
        await sim.call("destroy_task", task_id=task["task_id"])
    fake_tart.tart("stop", "outside-nomad", "--timeout", "0")
    fake_tart.tart("delete", "outside-nomad")


async def test_max_macos_vms_below_apples_limit(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path, plugin_hcl(max_macos_vms="1"))
    first = await start(sim, job(MACOS_IMAGE))
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job(MACOS_IMAGE))
    assert caught.value.recoverable is True and "max_macos_vms is 1" in caught.value.message
    await sim.call("stop_task", task_id=first["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=first["task_id"])
    assert fake_tart.tart("list", "-q", "--source", "local").stdout == ""


async def test_tarts_own_vm_limit_is_recoverable(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path, plugin_hcl(max_macos_vms="3"))
    tasks = [await start(sim, job(MACOS_IMAGE)) for _ in range(2)]
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job(MACOS_IMAGE))
    assert caught.value.recoverable is True
    assert "exceeds the system limit" in caught.value.message
    for task in tasks:
        await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
        await sim.call("destroy_task", task_id=task["task_id"])
    assert fake_tart.tart("list", "-q", "--source", "local").stdout == ""


async def test_leaked_macos_slots_take_the_node_off_macos_jobs_until_a_start_succeeds(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path, plugin_hcl(fingerprint_period='"1h"'))
    fp = await fingerprint(sim)
    assert int(attr(fp, "macos_vm_slots_free")) == 2 and attr(fp, "macos_vm_slots_leaked") is False
    stream = await sim.open_stream("fingerprint")
    with trio.fail_after(20):
        await stream.receive()
    first = await start(sim, job(MACOS_IMAGE))
    fake_tart.set_host_state(leaked_macos_slots=1)  # a VM that is gone still holds a slot
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job(MACOS_IMAGE))
    assert caught.value.recoverable is True and "exceeds the system limit" in caught.value.message
    with trio.fail_after(20):  # pushed at once, not at the next period (an hour here)
        while attr(pushed := await stream.receive(), "macos_vm_slots_leaked") is not True:
            pass
    assert int(attr(pushed, "macos_vm_slots_free")) == 0 and pushed["health"] == "HEALTHY"
    assert "Reboot the host" in pushed["health_description"]
    assert "while 1 of 2 macOS VMs ran" in pushed["health_description"]

    fake_tart.set_host_state(leaked_macos_slots=0)  # the host rebooted
    await sim.call("stop_task", task_id=first["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=first["task_id"])
    again = await start(sim, job(MACOS_IMAGE))
    with trio.fail_after(20):
        while attr(pushed := await stream.receive(), "macos_vm_slots_leaked") is not False:
            pass
    assert int(attr(pushed, "macos_vm_slots_free")) == 1
    assert pushed["health_description"] == "Healthy"
    await sim.close_stream(stream)
    await sim.call("stop_task", task_id=again["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=again["task_id"])


async def test_without_softnet_the_node_stays_healthy_for_the_other_modes(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    tart = f'"{fake_tart.tart_path}"'
    await launch(sim, fake_tart, tmp_path, plugin_hcl(tart_path=tart), PATH="/usr/bin:/bin")
    fp = await fingerprint(sim)
    assert fp["health"] == "HEALTHY" and attr(fp, "softnet") is False
    assert fp["health_description"] == (
        "Healthy. softnet and host networking are unavailable: softnet was not found next to "
        "tart or in /opt/homebrew/bin: install it (brew install cirruslabs/cli/softnet)."
    )
    message = await refused(sim, job(extra='network {\n mode = "host"\n}'))
    assert "network.mode: host networking needs softnet, which cannot run here" in message
    assert fake_tart.calls_of("clone") == []
    await sim.call(
        "set_config",
        with_nomad_config=True,
        hcl=plugin_hcl(tart_path=tart, allowed_network_modes='["shared", "bridged"]'),
    )
    fp = await fingerprint(sim)
    assert (fp["health"], fp["health_description"]) == ("HEALTHY", "Healthy")
    assert attr(fp, "softnet") is False


def macos_release(directory: Path, version: str) -> Path:
    """A ``sw_vers`` for a host that runs ``version`` of macOS; returns its directory."""
    directory.mkdir(exist_ok=True)
    script = directory / "sw_vers"
    script.write_text(f'#!/bin/sh\n[ "$1" = "-productVersion" ] && echo {version}\n')
    script.chmod(0o755)
    return directory


async def test_root_without_a_tart_user_is_unhealthy_on_macos_15(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    assert os.geteuid() == 0, "the conformance tests run as root"
    macos = macos_release(tmp_path / "macos", "15.3.1")
    path = f"{macos}:{fake_tart.env()['PATH']}"
    await launch(sim, fake_tart, tmp_path, plugin_hcl(), PATH=path)
    fp = await fingerprint(sim)
    assert fp["health"] == "UNHEALTHY" and fp["health_description"] == ROOT_ON_MACOS_15
    assert attr(fp, "macos_version") == "15.3.1"
    macos_release(macos, "14.7.2")
    await sim.call("sigkill")
    await launch(sim, fake_tart, tmp_path, plugin_hcl(), PATH=path)
    fp = await fingerprint(sim)
    assert fp["health"] == "HEALTHY" and attr(fp, "macos_version") == "14.7.2"


async def test_tart_list_failing_is_unhealthy(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    await launch(sim, fake_tart, tmp_path, plugin_hcl(), TART_HOME=str(blocker / "home"))
    fp = await fingerprint(sim)
    assert fp["health"] == "UNHEALTHY" and "tart list" in fp["health_description"]


async def test_an_unexpected_answer_from_tart_never_ends_the_fingerprint_stream(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    """A wrapper in front of tart that prints an object where Tart prints a list."""
    wrapper = tmp_path / "wrapper" / "tart"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = list ]; then echo \'{"vms": []}\'; exit 0; fi\n'
        f'exec "{fake_tart.tart_path}" "$@"\n'
    )
    wrapper.chmod(0o755)
    hcl = plugin_hcl(tart_path=f'"{wrapper}"', fingerprint_period='"1s"')
    await launch(sim, fake_tart, tmp_path, hcl)
    stream = await sim.open_stream("fingerprint")
    with trio.fail_after(20):
        first = await stream.receive()
    assert first["health"] == "UNHEALTHY"
    assert first["health_description"].startswith(
        "Checking the macOS VM slots failed unexpectedly (AttributeError"
    )
    assert attr(first, "version") == "2.35.0", "what could be checked is still reported"
    logged = [line for line in plugin_log(tmp_path / "plugin.log") if line.get("check")]
    assert logged and logged[0]["@level"] == "error", "the error and its traceback are logged"
    wrapper.write_text(f'#!/bin/sh\nexec "{fake_tart.tart_path}" "$@"\n')  # the wrapper fixed
    with trio.fail_after(20):
        while (await stream.receive())["health"] != "HEALTHY":
            pass
    await sim.call("close_stream", stream=stream.id)


async def test_what_the_installed_tart_cannot_do_is_refused_before_cloning(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    await launch(sim, fake_tart, tmp_path, plugin_hcl(), FAKETART_VERSION="2.9.1")
    fp = await fingerprint(sim)
    assert fp["health"] == "UNHEALTHY" and attr(fp, "version") == "2.9.1"
    assert (
        "older than 2.10.0, the oldest version this driver supports" in (fp["health_description"])
    )
    await sim.call("kill")

    # Tart 2.18.0: no caching= (2.21.0) nor --net-softnet-expose (2.23.0), and at the VM
    # limit it still prints Virtualization.framework's own error.
    env = {"FAKETART_VERSION": "2.18.0", "FAKETART_MAX_MACOS_VMS": "0"}
    await launch(sim, fake_tart, tmp_path, plugin_hcl(max_macos_vms="3"), **env)
    fp = await fingerprint(sim)
    assert fp["health"] == "HEALTHY" and attr(fp, "version") == "2.18.0"
    message = await refused(sim, job(extra='root_disk {\n caching_mode = "cached"\n}'))
    assert message.endswith(
        "root_disk.caching_mode: needs Tart 2.21.0 or later (--root-disk-opts caching=); "
        "this host has Tart 2.18.0: upgrade Tart or remove the option"
    )
    message = await refused(sim, job(extra='network {\n softnet_expose = ["2222:22"]\n}'))
    assert "network.softnet_expose: needs Tart 2.23.0 or later" in message
    assert fake_tart.calls_of("clone") == []
    ok = await start(sim, job(extra="root_disk {\n readonly = true\n}"))  # 2.16.0 is enough
    await sim.call("stop_task", task_id=ok["task_id"], timeout_seconds=5)
    await sim.call("destroy_task", task_id=ok["task_id"])
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job(MACOS_IMAGE))
    assert caught.value.recoverable is True, "the VM limit is retried, whatever the text"
    assert "The maximum supported number of active virtual machines" in caught.value.message
    assert fake_tart.tart("list", "-q", "--source", "local").stdout == ""
