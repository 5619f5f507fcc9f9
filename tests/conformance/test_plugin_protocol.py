"""Our plugin under the real go-plugin client, as Nomad's loader and client drive it."""

from __future__ import annotations

import base64
import statistics
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from tart_trio._config.decode import decode_plugin_config, decode_task_config
from tart_trio._config.plugin import GCConfig, PluginConfig, PrePull, RegistryAuth
from tart_trio._config.task import Auth, Directory, DirectoryOptions, Network, RootDisk, TaskConfig
from tart_trio._errors import ConfigError
from tests.conformance.conftest import EXAMPLES, launch_args, plugin_log
from tests.conformance.nomadsim import NomadSim, NomadSimError

PASSWORD = "pa55-from-nomad-var"


async def test_launching_twenty_times_never_fails(sim: NomadSim, tmp_path: Path) -> None:
    seconds = []
    for _ in range(20):
        launched = await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
        seconds.append(launched["handshake_seconds"])
        assert (await sim.call("plugin_info"))["name"] == "tart"
        killed = await sim.call("kill")
        assert killed["graceful"], killed
        assert killed["exit_error"] is None, killed
    print(
        f"\nexec to handshake over 20 launches: median {statistics.median(seconds):.3f}s, "
        f"min {min(seconds):.3f}s, max {max(seconds):.3f}s"
    )


async def test_plugin_info_and_schemas(sim: NomadSim, tmp_path: Path) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
    info = await sim.call("plugin_info")
    assert info == {
        "type": "DRIVER",
        "plugin_api_versions": ["v0.1.0"],
        "plugin_version": "0.1.0",
        "name": "tart",
    }
    schema = await sim.call("config_schema")
    assert schema["valid"], schema
    task_schema = await sim.call("task_config_schema")
    assert task_schema["valid"], task_schema
    await sim.call("init")
    caps = (await sim.call("capabilities"))["capabilities"]
    assert caps["exec"] is True and caps["send_signals"] is True
    assert caps["fs_isolation"] == "IMAGE"


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ("agent.hcl", PluginConfig()),
        ("agent-full.hcl", PluginConfig(gc=GCConfig(), pre_pull=PrePull())),
        (
            "agent-fleet.hcl",
            PluginConfig(
                tart_user="ci",
                pre_pull=PrePull(
                    images=(
                        "ghcr.io/cirruslabs/macos-sequoia-xcode:latest",
                        "registry.example.com/ci/macos-xcode:16",
                    ),
                    auth=(
                        RegistryAuth(
                            registry="registry.example.com",
                            username="ci-bot",
                            password="registry-token",
                        ),
                    ),
                ),
                disk_reserve=40,
                image_cache_budget=300,
            ),
        ),
        (
            "agent-hardened.hcl",
            PluginConfig(
                tart_path="/opt/homebrew/bin/tart",
                tart_user="ci",
                run_in_login_session=True,
                allowed_images=("ghcr.io/cirruslabs/macos-*", "registry.example.com/ci/*"),
                allowed_directories=("/Users/ci/shared",),
                allowed_network_modes=("shared", "softnet"),
            ),
        ),
        (None, PluginConfig()),
    ],
)
async def test_agent_config_round_trips(
    sim: NomadSim, tmp_path: Path, agent: str | None, expected: PluginConfig
) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
    hcl = (EXAMPLES / agent).read_text() if agent else ""
    for with_nomad_config in (False, True):  # the validation launch, then the real one
        sent = await sim.call("set_config", hcl=hcl, with_nomad_config=with_nomad_config)
        assert decode_plugin_config(base64.b64decode(sent["msgpack_b64"])) == expected


async def test_invalid_agent_config_fails_set_config(sim: NomadSim, tmp_path: Path) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
    hcl = 'plugin "nomad-driver-tart" {\n  config {\n    fingerprint_period = "often"\n  }\n}\n'
    with pytest.raises(NomadSimError) as caught:
        await sim.call("set_config", hcl=hcl)
    assert "fingerprint_period" in caught.value.message
    assert "30s" in caught.value.message


def _seed_example() -> TaskConfig:
    return TaskConfig(
        url="ghcr.io/cirruslabs/macos-sequoia-base:latest",
        ssh_user="admin",
        ssh_password=PASSWORD,
        disk_size=60,
    )


_BASE = {
    "url": "ghcr.io/cirruslabs/macos-sequoia-base:latest",
    "ssh_user": "admin",
    "ssh_password": "admin",
}

EXPECTED: dict[str, TaskConfig] = {
    "macos-sequoia-vanilla.nomad.hcl": _seed_example(),
    "network-bridged.nomad.hcl": TaskConfig(
        **_BASE, network=Network(mode="bridged", bridged_interface="en0")
    ),
    "network-softnet.nomad.hcl": TaskConfig(
        **_BASE,
        network=Network(softnet_allow=("192.168.0.0/24",), softnet_expose=("2222:22", "8080:80")),
    ),
    "network-host.nomad.hcl": TaskConfig(**_BASE, network=Network(mode="host")),
    "network-shared.nomad.hcl": TaskConfig(
        url="ghcr.io/cirruslabs/ubuntu:latest",
        ssh_user="admin",
        ssh_password="admin",
        network=Network(mode="shared"),
        log_command=("sudo", "journalctl", "--follow", "--output", "short-iso"),
    ),
    "root-disk.nomad.hcl": TaskConfig(
        **_BASE,
        disk_size=80,
        root_disk=RootDisk(readonly=True, caching_mode="automatic", sync_mode="full"),
    ),
    "directories.nomad.hcl": TaskConfig(
        **_BASE,
        directory=(
            Directory(
                name="assets",
                path="/Users/me/project/assets",
                options=DirectoryOptions(readonly=True, tag="assets"),
            ),
            Directory(name="cache", path="/Users/me/cache"),
            Directory(path="/Users/me/project/build"),
        ),
    ),
    "ci-build.nomad.hcl": TaskConfig(
        url="ghcr.io/cirruslabs/macos-sequoia-base:latest",
        ssh_user="admin",
        ssh_password=PASSWORD,
        command="/bin/bash",
        args=("local/build.sh",),
        timeout="1h",
    ),
    "ci-build-linux.nomad.hcl": TaskConfig(
        url="ghcr.io/cirruslabs/ubuntu:latest",
        ssh_user="admin",
        ssh_password="admin",
        command="/bin/sh",
        args=("local/test.sh",),
        timeout="20m",
    ),
    "private-registry.nomad.hcl": TaskConfig(
        url="registry.example.com/ci/macos-xcode:16",
        ssh_user="admin",
        ssh_password="admin",
        auth=Auth(username="ci-bot", password=PASSWORD),
    ),
    "service-ports.nomad.hcl": TaskConfig(**_BASE, ports=("ssh", "http")),
    "ci-warm.nomad.hcl": TaskConfig(
        **_BASE, command="/bin/sh", args=("local/build.sh",), warm_start=True
    ),
    "warm-fleet.nomad.hcl": TaskConfig(
        url="ghcr.io/cirruslabs/macos-sequoia-xcode:latest", pull_only=True, force_pull=True
    ),
    "ci-cached-image.nomad.hcl": TaskConfig(
        url="ghcr.io/cirruslabs/macos-sequoia-xcode:latest",
        ssh_user="admin",
        ssh_password=PASSWORD,
        force_pull=True,
        command="/bin/bash",
        args=("-c", "xcodebuild -version && xcrun simctl list runtimes"),
        timeout="30m",
    ),
}


def test_every_example_job_has_an_expectation() -> None:
    assert set(EXPECTED) == {p.name for p in EXAMPLES.glob("*.nomad.hcl")}


@pytest.mark.parametrize("job", sorted(EXPECTED))
async def test_example_jobs_round_trip(sim: NomadSim, tmp_path: Path, job: str) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
    env = {"SSH_PASSWORD": PASSWORD, "REGISTRY_TOKEN": PASSWORD}
    encoded = await sim.call("encode_job", job_file=str(EXAMPLES / job), env=env)
    (task,) = encoded["tasks"].values()
    config = decode_task_config(base64.b64decode(task["msgpack_b64"]))
    assert config == EXPECTED[job]
    assert msgspec.structs.asdict(config) == msgspec.structs.asdict(EXPECTED[job])


def _job(config: str) -> str:
    return (
        'job "j" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
        f"      config {{\n{config}\n      }}\n    }}\n  }}\n}}\n"
    )


_REQUIRED = 'url = "ghcr.io/x/y:1"\nssh_user = "admin"\nssh_password = "pw"\n'

BAD_INPUTS: list[tuple[str, str, list[str]]] = [
    ('network {\n mode = "wifi"\n}', "network.mode", ["shared", "host", "bridged", "softnet"]),
    ('network {\n mode = "bridged"\n}', "network.bridged_interface", ["required"]),
    (
        'network {\n mode = "host"\n softnet_allow = ["10.0.0.0/8"]\n}',
        "network.softnet_allow",
        ["softnet"],
    ),
    (
        'network {\n softnet_expose = ["22-2222"]\n}',
        "network.softnet_expose[0]",
        ["EXTERNAL:INTERNAL"],
    ),
    ('network {\n softnet_allow = ["10.0.0.300/8"]\n}', "network.softnet_allow[0]", ["CIDR"]),
    (
        'root_disk {\n caching_mode = "fast"\n}',
        "root_disk.caching_mode",
        ["automatic", "uncached", "cached"],
    ),
    ('root_disk {\n sync_mode = "sometimes"\n}', "root_disk.sync_mode", ["fsync", "full", "none"]),
    ('directory {\n path = "relative/path"\n}', "directory[0].path", ["absolute"]),
    ("disk_size = -5", "disk_size", [">= 0"]),
    ("disk_size = 1.5", "disk_size", ["int"]),
]

# ssh_user and ssh_password are optional in the schema (a pull_only task needs neither)
NO_LOGIN = 'url = "ghcr.io/x/y:1"\n'
LOGIN_INPUTS: list[tuple[str, str, list[str]]] = [
    ('ssh_user = "a"', "ssh_password", ["required", "pull_only"]),
    ('ssh_password = "pw"', "ssh_user", ["required", "pull_only"]),
    ('pull_only = true\nurl = "local-vm"', "pull_only", ["remote", "'local-vm'"]),
]


@pytest.mark.parametrize(("snippet", "field", "words"), BAD_INPUTS)
async def test_bad_inputs_get_clear_errors(
    sim: NomadSim, tmp_path: Path, snippet: str, field: str, words: list[str]
) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
    encoded = await sim.call("encode_job", job_hcl=_job(_REQUIRED + snippet))
    (task,) = encoded["tasks"].values()
    with pytest.raises(ConfigError) as caught:
        decode_task_config(base64.b64decode(task["msgpack_b64"]))
    assert caught.value.field == field
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(("snippet", "field", "words"), LOGIN_INPUTS)
async def test_a_missing_guest_login_gets_a_clear_error(
    sim: NomadSim, tmp_path: Path, snippet: str, field: str, words: list[str]
) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
    body = snippet if "url" in snippet else NO_LOGIN + snippet
    encoded = await sim.call("encode_job", job_hcl=_job(body))
    (task,) = encoded["tasks"].values()
    with pytest.raises(ConfigError) as caught:
        decode_task_config(base64.b64decode(task["msgpack_b64"]))
    assert caught.value.field == field
    for word in words:
        assert word in str(caught.value)


async def test_missing_required_option_fails_in_nomad(sim: NomadSim, tmp_path: Path) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
    with pytest.raises(NomadSimError) as caught:
        await sim.call("encode_job", job_hcl=_job('ssh_user = "a"\nssh_password = "pw"'))
    assert "url" in str(caught.value)


async def _first(sim: NomadSim, op: str) -> dict[str, Any]:
    stream = await sim.open_stream(op)
    with trio.fail_after(10):
        msg: dict[str, Any] = await stream.receive()
    return msg


async def test_fingerprint_undetected_without_tart(sim: NomadSim, tmp_path: Path) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log", PATH="/nonexistent"))
    await sim.call("set_config", hcl="", with_nomad_config=True)
    first = await _first(sim, "fingerprint")
    assert first["health"] == "UNDETECTED"
    assert "tart executable was not found" in first["health_description"]


async def test_fingerprint_undetected_when_disabled(sim: NomadSim, tmp_path: Path) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log"))
    hcl = 'plugin "nomad-driver-tart" {\n  config {\n    enabled = false\n  }\n}\n'
    await sim.call("set_config", hcl=hcl, with_nomad_config=True)
    first = await _first(sim, "fingerprint")
    assert first["health"] == "UNDETECTED"
    assert "disabled" in first["health_description"]


async def test_streams_stay_open(sim: NomadSim, tmp_path: Path) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log", PATH="/nonexistent"))
    await sim.call("set_config", hcl="", with_nomad_config=True)
    events = await sim.open_stream("task_events")
    fingerprints = await sim.open_stream("fingerprint")
    await fingerprints.receive()
    for _ in range(3):
        await sim.call("plugin_info")
    assert events.end is None and fingerprints.end is None
    killed = await sim.call("kill")
    assert killed["graceful"], killed


async def test_plugin_logs_arrive_at_their_level(sim: NomadSim, tmp_path: Path) -> None:
    log = tmp_path / "plugin.log"
    await sim.call("launch", **launch_args(log))
    await sim.call("kill")
    serving = [e for e in plugin_log(log) if e.get("@message") == "plugin serving"]
    assert serving and serving[0]["@level"] == "info"
