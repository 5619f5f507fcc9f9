"""Task and plugin config: decoding go-cty msgpack and the errors users see."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tart_trio._config.decode import decode_plugin_config, decode_task_config
from tart_trio._config.plugin import PluginConfig
from tart_trio._config.task import (
    Directory,
    DirectoryOptions,
    TaskConfig,
    check_ports,
    network_mode,
)
from tart_trio._errors import ConfigError


def encoded(**overrides: Any) -> bytes:
    """A task config as Nomad sends it: every key present, absent blocks nil."""
    base: dict[str, Any] = {
        "auth": None,
        "directory": [],
        "disk_size": 0,
        "network": None,
        "root_disk": None,
        "show_ui": False,
        "ssh_password": "s3cret",
        "ssh_user": "admin",
        "url": "ghcr.io/cirruslabs/macos-sequoia-base:latest",
    }
    base.update(overrides)
    return msgspec.msgpack.encode(base)


def network(**fields: Any) -> dict[str, Any]:
    return {
        "mode": None,
        "bridged_interface": None,
        "softnet_allow": [],
        "softnet_expose": [],
        **fields,
    }


def directory(**fields: Any) -> dict[str, Any]:
    return {"name": None, "options": None, **fields}


def test_numbers_arrive_as_int_float_or_decimal_string() -> None:
    assert decode_task_config(encoded(disk_size=60)).disk_size == 60
    assert decode_task_config(encoded(disk_size=60.0)).disk_size == 60
    assert decode_task_config(encoded(disk_size="60")).disk_size == 60


def test_password_is_redacted_in_repr() -> None:
    config = decode_task_config(encoded(auth={"username": "u", "password": "tok3n"}))
    assert "s3cret" not in repr(config)
    assert "tok3n" not in repr(config)
    assert "<redacted>" in str(config)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (
            {"network": network(mode="wifi")},
            "network.mode",
            ["'wifi'", "shared", "host", "bridged", "softnet"],
        ),
        ({"network": network(mode="bridged")}, "network.bridged_interface", ["required"]),
        (
            {"network": network(mode="host", softnet_allow=["10.0.0.0/8"])},
            "network.softnet_allow",
            ["softnet"],
        ),
        (
            {"network": network(mode="host", softnet_expose=["2222:22"])},
            "network.softnet_expose",
            ["softnet"],
        ),
        (
            {"network": network(softnet_expose=["2222"])},
            "network.softnet_expose[0]",
            ["EXTERNAL:INTERNAL"],
        ),
        (
            {"network": network(softnet_expose=["22:70000"])},
            "network.softnet_expose[0]",
            ["1-65535"],
        ),
        ({"network": network(softnet_allow=["10.0.0.0/33"])}, "network.softnet_allow[0]", ["CIDR"]),
        ({"network": network(softnet_allow=["banana"])}, "network.softnet_allow[0]", ["CIDR"]),
        (
            {"root_disk": {"readonly": False, "caching_mode": "fast", "sync_mode": None}},
            "root_disk.caching_mode",
            ["automatic", "uncached", "cached"],
        ),
        (
            {"root_disk": {"readonly": False, "caching_mode": None, "sync_mode": "always"}},
            "root_disk.sync_mode",
            ["fsync", "full", "none"],
        ),
        ({"directory": [directory(path="relative/dir")]}, "directory[0].path", ["absolute"]),
        ({"disk_size": -1}, "disk_size", [">= 0"]),
        ({"disk_size": "lots"}, "disk_size", ["int"]),
        ({"url": ""}, "url", ["empty"]),
        ({"directory": [directory(path="/a", name="secrets")]}, "directory[0].name", ["reserved"]),
        (
            {"directory": [directory(path="/a", name="x"), directory(path="/b", name="x")]},
            "directory[1].name",
            ["directory[0]"],
        ),
        ({"directory": [directory(path="/a:b")]}, "directory[0].path", ["':'"]),
        ({"ssh_user": ""}, "ssh_user", ["required", "pull_only"]),
        ({"ssh_password": ""}, "ssh_password", ["required", "pull_only"]),
        ({"pull_only": True, "url": "my-local-vm"}, "pull_only", ["remote", "'my-local-vm'"]),
        ({"args": ["x"]}, "args", ["only applies with command"]),
        ({"timeout": "1h"}, "timeout", ["only applies with command"]),
        ({"command": "make", "timeout": "soon"}, "timeout", ["30s", "1h30m"]),
        ({"command": "make", "timeout": "500ms"}, "timeout", ["at least 1s"]),
        ({"command": "   "}, "command", ["program"]),
        ({"command": "make", "args": ["a", "b\0c"]}, "args[1]", ["NUL"]),
        (
            {"command": "make", "directory": [directory(path="/a", name="alloc-data")]},
            "directory[0].name",
            ["reserved", "alloc-data/"],
        ),
        # A timeout of 309 digits is infinite as a float; one past INT_MAX seconds is more
        # than BSD's sleep(1) takes; both used to fail only after the clone and boot.
        ({"command": "make", "timeout": "9" * 309 + "s"}, "timeout", ["292 years"]),
        ({"command": "make", "timeout": "600000h"}, "timeout", ["at most 2147483647s"]),
        # One argument of sh -c carries them all, and Linux caps one argument at 128 KiB.
        ({"command": "make", "args": ["x" * 70000]}, "args", ["65536", "local/"]),
        ({"command": "make", "args": ["'" * 20000]}, "args", ["bytes as the guest's shell"]),
        ({"command": "make", "pull_only": True}, "command", ["pull_only"]),
        ({"ports": ["http", "ssh", "http"]}, "ports[2]", ["'http'", "twice"]),
        ({"ports": [" "]}, "ports[0]", ["port label", "network block"]),
        ({"ports": ["http"], "pull_only": True}, "ports", ["pull_only"]),
        ({"warm_start": True, "pull_only": True}, "warm_start", ["pull_only"]),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(
    overrides: dict[str, Any], field: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        decode_task_config(encoded(**overrides))
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"invalid task config: {field}: ")
    for word in words:
        assert word in message
    assert "s3cret" not in message


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        decode_task_config(encoded(colour="blue"))


def test_type_error_on_a_secret_never_shows_its_value() -> None:
    with pytest.raises(ConfigError) as caught:
        decode_task_config(encoded(ssh_password=["s3cret"]))
    assert caught.value.field == "ssh_password"
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("net", "mode"),
    [
        (None, "shared"),
        (network(), "shared"),
        (network(mode="nat"), "shared"),
        (network(mode="default"), "shared"),
        (network(softnet_allow=["10.0.0.0/8"]), "softnet"),
        (network(softnet_expose=["8080:80"]), "softnet"),
        (network(mode="softnet"), "softnet"),
        (network(mode="host"), "host"),
        (network(mode="bridged", bridged_interface="en0"), "bridged"),
    ],
)
def test_effective_network_mode(net: dict[str, Any] | None, mode: str) -> None:
    assert network_mode(decode_task_config(encoded(network=net)).network) == mode


def test_unnamed_directory_is_named_after_its_path() -> None:
    config = decode_task_config(encoded(directory=[directory(path="/Users/me/build/")]))
    assert config.directory == (Directory(path="/Users/me/build/"),)


def test_unnamed_directory_on_its_own_tag_is_allowed() -> None:
    config = decode_task_config(
        encoded(directory=[directory(path="/src", options={"readonly": True, "tag": "src"})])
    )
    assert config.directory[0].options == DirectoryOptions(readonly=True, tag="src")


def test_unnamed_directories_sharing_a_custom_tag_must_be_named() -> None:
    opts = {"readonly": False, "tag": "t"}
    with pytest.raises(ConfigError, match=r"directory\[0\]\.name: is required"):
        decode_task_config(
            encoded(
                directory=[directory(path="/a", options=opts), directory(path="/b", options=opts)]
            )
        )


def test_plugin_config_defaults_and_errors() -> None:
    assert decode_plugin_config(b"") == PluginConfig()
    full = msgspec.msgpack.encode(
        {
            "enabled": False,
            "tart_path": "/usr/local/bin/tart",
            "tart_home": "/var/tart",
            "fingerprint_period": "1m30s",
        }
    )
    config = decode_plugin_config(full)
    assert config.fingerprint_period_seconds == 90
    bad = msgspec.msgpack.encode(
        {"enabled": True, "tart_path": "", "tart_home": "", "fingerprint_period": "often"}
    )
    with pytest.raises(ConfigError, match="invalid plugin config: fingerprint_period: 'often'"):
        decode_plugin_config(bad)
    session = msgspec.msgpack.encode({"run_in_login_session": True})
    with pytest.raises(ConfigError, match="run_in_login_session: needs tart_user"):
        decode_plugin_config(session)


def _pool(**fields: Any) -> dict[str, Any]:
    return {
        "name": "xcode",
        "image": "ghcr.io/cirruslabs/macos-sequoia-xcode:latest",
        "cores": 4,
        "memory": 8192,
        **fields,
    }


@pytest.mark.parametrize(
    ("plugin", "field", "words"),
    [
        ({"warm_pool": [_pool(name="Xcode-16")]}, "warm_pool[0].name", ["lower-case", "attribute"]),
        ({"warm_pool": [_pool(), _pool()]}, "warm_pool[1].name", ["two pools"]),
        ({"warm_pool": [_pool(image="my-local-vm")]}, "warm_pool[0].image", ["remote image"]),
        ({"warm_pool": [_pool(network="bridged")]}, "warm_pool[0].network", ["shared, softnet"]),
        (
            {"warm_pool": [_pool(slots=2)], "max_macos_vms": 1},
            "warm_pool[0].slots",
            ["max_macos_vms"],
        ),
        ({"warm_pool": [_pool(max_age="10s")]}, "warm_pool[0].max_age", ["at least 1m"]),
        ({"warm_pool": [_pool(resume_timeout="1h")]}, "warm_pool[0].resume_timeout", ["10m"]),
        ({"warm_dir": "relative"}, "warm_dir", ["absolute"]),
    ],
)
def test_bad_warm_pools_name_the_field(
    plugin: dict[str, Any], field: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        decode_plugin_config(msgspec.msgpack.encode(plugin))
    assert caught.value.field == field
    for word in words:
        assert word in str(caught.value)


def test_a_warm_pools_password_is_never_shown() -> None:
    config = decode_plugin_config(
        msgspec.msgpack.encode({"warm_pool": [_pool(ssh_password="s3cret")]})
    )
    assert config.warm_pool[0].ssh_password == "s3cret"
    assert "s3cret" not in repr(config)


def test_task_config_struct_is_the_documented_one() -> None:
    fields = {f.name: f for f in msgspec.structs.fields(TaskConfig)}
    assert set(fields) == {
        "url",
        "ssh_user",
        "ssh_password",
        "show_ui",
        "disk_size",
        "auth",
        "network",
        "root_disk",
        "directory",
        "log_command",
        "force_pull",
        "pull_only",
        "command",
        "args",
        "work_dir",
        "timeout",
        "guest_logs",
        "ports",
        "warm_start",
    }
    assert {n for n, f in fields.items() if f.required} == {"url"}


def test_ports_must_be_ports_nomad_allocated_to_the_group() -> None:
    config = decode_task_config(encoded(ports=["ssh", "http"]))
    check_ports(config, {"ssh", "http", "metrics"})
    with pytest.raises(ConfigError) as caught:
        check_ports(config, {"ssh"})
    assert caught.value.field == "ports[1]"
    assert "'http' is not in the group's network block (its ports: ssh)" in str(caught.value)
    with pytest.raises(ConfigError, match=r"\(its ports: none\)"):
        check_ports(config, set())


def test_a_pull_only_task_needs_no_guest_login() -> None:
    config = decode_task_config(encoded(ssh_user="", ssh_password="", pull_only=True))
    assert config.pull_only and config.ssh_user == "" and not config.force_pull


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"pre_pull": {"images": ["ubuntu"]}}, "pre_pull.images[0]", ["'ubuntu'", "remote"]),
        ({"pre_pull": {"concurrency": 0}}, "pre_pull.concurrency", [">= 1"]),
        ({"pre_pull": {"period": "soon"}}, "pre_pull.period", ["'soon'"]),
        (
            {"pre_pull": {"auth": [{"registry": "", "username": "u", "password": "tok3n"}]}},
            "pre_pull.auth[0].registry",
            ["empty"],
        ),
        ({"disk_reserve": -5}, "disk_reserve", [">= 0"]),
        ({"image_cache_budget": -1}, "image_cache_budget", [">= 0"]),
    ],
)
def test_bad_fleet_options_name_the_field(
    fields: dict[str, Any], field: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        decode_plugin_config(msgspec.msgpack.encode(fields))
    assert caught.value.field == field
    for word in words:
        assert word in str(caught.value)
    assert "tok3n" not in str(caught.value)


def test_a_command_turns_guest_logs_off_unless_asked_for() -> None:
    plain = decode_task_config(encoded())
    assert plain.streams_guest_logs and plain.timeout_seconds == 0
    job = decode_task_config(encoded(command="/bin/bash", args=["-c", "make"], timeout="1h30m"))
    assert not job.streams_guest_logs and job.timeout_seconds == 5400
    assert decode_task_config(encoded(command="make", guest_logs=True)).streams_guest_logs
    assert not decode_task_config(encoded(guest_logs=False)).streams_guest_logs
    # alloc and local are only reserved when they are shared, i.e. with a command
    named = decode_task_config(encoded(directory=[directory(path="/a", name="alloc")]))
    assert named.directory[0].name == "alloc"
