"""The baseline for the config-decode benchmark: builtins decode + validation by hand.

``msgspec.msgpack.decode`` to plain dicts and lists, then every check that
``tart_trio._config.decode.decode_task_config`` makes (types, required fields, defaults, unknown
fields, ranges, and the semantic checks of ``validate_task_config``), written out by hand
the way one would without typed Structs. The result is a plain dict with the same content
as ``msgspec.to_builtins(decode_task_config(data))``; the benchmark checks that it is.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import msgspec

from tart_trio._config.durations import parse_duration

NAT_MODES = ("shared", "nat", "default")
NETWORK_MODES = (*NAT_MODES, "host", "bridged", "softnet")
CACHING_MODES = ("automatic", "uncached", "cached")
SYNC_MODES = ("fsync", "full", "none")
DEFAULT_TAG = "com.apple.virtio-fs.automount"
DEFAULT_LOG_COMMAND = ["/usr/bin/log", "stream", "--style", "syslog", "--level", "info"]


class HandError(ValueError):
    """An invalid task config: the field path and what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _object(value: Any, field: str, keys: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise HandError(field, f"expected an object, got {type(value).__name__}")
    for key in value:
        if key not in keys:
            raise HandError(f"{field}.{key}".lstrip("."), "object contains unknown field")
    for key in required:
        if key not in value:
            raise HandError(field, f"object missing required field {key!r}")
    return value


def _str(value: Any, field: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise HandError(field, f"expected str, got {type(value).__name__}")
    return value


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):  # msgspec's lax mode accepts these
        return bool(value == "true")
    raise HandError(field, f"expected bool, got {type(value).__name__}")


def _optional_bool(value: Any, field: str) -> bool | None:
    return None if value is None else _bool(value, field)


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise HandError(field, "expected int, got bool")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise HandError(field, "expected int, got str") from None
    if not isinstance(value, int):
        raise HandError(field, f"expected int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise HandError(field, f"expected int between {lo} and {hi}")
    return value


def _strings(value: Any, field: str) -> list[str]:
    if not isinstance(value, list):
        raise HandError(field, f"expected array, got {type(value).__name__}")
    for i, item in enumerate(value):
        _str(item, f"{field}[{i}]")
    return value


def _network(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    keys = {"mode", "bridged_interface", "softnet_allow", "softnet_expose"}
    obj = _object(raw, "network", keys, set())
    net: dict[str, Any] = {
        "mode": _str(obj.get("mode"), "network.mode", optional=True),
        "bridged_interface": _str(
            obj.get("bridged_interface"), "network.bridged_interface", optional=True
        ),
        "softnet_allow": _strings(obj.get("softnet_allow", []), "network.softnet_allow"),
        "softnet_expose": _strings(obj.get("softnet_expose", []), "network.softnet_expose"),
    }
    mode_set = net["mode"]
    if mode_set is not None and mode_set not in NETWORK_MODES:
        raise HandError("network.mode", f"{mode_set!r} is not one of: {', '.join(NETWORK_MODES)}")
    if mode_set is None:
        mode = "softnet" if net["softnet_allow"] or net["softnet_expose"] else "shared"
    else:
        mode = "shared" if mode_set in NAT_MODES else mode_set
    for name in ("softnet_allow", "softnet_expose"):
        if net[name] and mode != "softnet":
            raise HandError(f"network.{name}", "only applies to softnet networking")
    if mode == "bridged" and not net["bridged_interface"]:
        raise HandError("network.bridged_interface", 'is required with mode = "bridged"')
    if net["bridged_interface"] is not None and mode != "bridged":
        raise HandError("network.bridged_interface", 'only applies to mode = "bridged"')
    for i, cidr in enumerate(net["softnet_allow"]):
        try:
            ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            raise HandError(f"network.softnet_allow[{i}]", "not an IPv4 CIDR") from None
    for i, spec in enumerate(net["softnet_expose"]):
        parts = spec.split(":")
        if not (len(parts) == 2 and all(p.isdigit() and 1 <= int(p) <= 65535 for p in parts)):
            raise HandError(f"network.softnet_expose[{i}]", "not EXTERNAL:INTERNAL")
    return net


def _root_disk(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    obj = _object(raw, "root_disk", {"readonly", "caching_mode", "sync_mode"}, set())
    disk: dict[str, Any] = {
        "readonly": _bool(obj.get("readonly", False), "root_disk.readonly"),
        "caching_mode": _str(obj.get("caching_mode"), "root_disk.caching_mode", optional=True),
        "sync_mode": _str(obj.get("sync_mode"), "root_disk.sync_mode", optional=True),
    }
    if disk["caching_mode"] is not None and disk["caching_mode"] not in CACHING_MODES:
        raise HandError("root_disk.caching_mode", "not one of: " + ", ".join(CACHING_MODES))
    if disk["sync_mode"] is not None and disk["sync_mode"] not in SYNC_MODES:
        raise HandError("root_disk.sync_mode", "not one of: " + ", ".join(SYNC_MODES))
    return disk


def _directories(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise HandError("directory", f"expected array, got {type(raw).__name__}")
    out = []
    by_tag: dict[str, list[tuple[int, str | None]]] = {DEFAULT_TAG: [(-1, "secrets")]}
    for i, item in enumerate(raw):
        field = f"directory[{i}]"
        obj = _object(item, field, {"path", "name", "options"}, {"path"})
        options: dict[str, Any] | None = None
        if obj.get("options") is not None:
            opts = _object(obj["options"], f"{field}.options", {"readonly", "tag"}, set())
            options = {
                "readonly": _bool(opts.get("readonly", False), f"{field}.options.readonly"),
                "tag": _str(opts.get("tag"), f"{field}.options.tag", optional=True),
            }
        directory: dict[str, Any] = {
            "path": _str(obj["path"], f"{field}.path"),
            "name": _str(obj.get("name"), f"{field}.name", optional=True),
            "options": options,
        }
        path = directory["path"]
        assert isinstance(path, str)
        if not path.startswith("/"):
            raise HandError(f"{field}.path", "not an absolute path")
        checks = [("path", path), ("name", directory["name"])]
        if options is not None:
            checks.append(("options.tag", options["tag"]))
        for key, value in checks:
            if value is not None and (value == "" or ":" in value or "," in value):
                raise HandError(f"{field}.{key}", "must be non-empty, without ':' or ','")
        tag = options["tag"] if options is not None and options["tag"] is not None else None
        if directory["name"] is not None:
            name = directory["name"]
        elif tag is not None:
            name = None
        else:
            name = path.rstrip("/").rsplit("/", 1)[-1] or None
        if name is None and path.rstrip("/") == "":
            raise HandError(f"{field}.name", "is required when sharing /")
        by_tag.setdefault(tag or DEFAULT_TAG, []).append((i, name))
        out.append(directory)
    for shares in by_tag.values():
        seen: dict[str, int] = {}
        for i, name in shares:
            if name is None and len(shares) > 1:
                raise HandError(f"directory[{i}].name", "is required: the tag has several shares")
            if name is not None and name in seen:
                raise HandError(f"directory[{i}].name", f"{name!r} is already used")
            if name is not None:
                seen[name] = i
    return out


TOP_KEYS = {
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
    "warm_start",
    "ports",
}


def decode(data: bytes) -> dict[str, Any]:
    """Decode and validate by hand; raise HandError like decode_task_config raises ConfigError."""
    try:
        raw = msgspec.msgpack.decode(data)
    except msgspec.DecodeError as exc:
        raise HandError("", f"undecodable msgpack ({exc})") from None
    obj = _object(raw, "", TOP_KEYS, {"url"})
    auth = None
    if obj.get("auth") is not None:
        a = _object(obj["auth"], "auth", {"username", "password"}, {"username", "password"})
        auth = {
            "username": _str(a["username"], "auth.username"),
            "password": _str(a["password"], "auth.password"),
        }
    config: dict[str, Any] = {
        "url": _str(obj["url"], "url"),
        "ssh_user": _str(obj.get("ssh_user", ""), "ssh_user"),
        "ssh_password": _str(obj.get("ssh_password", ""), "ssh_password"),
        "show_ui": _bool(obj.get("show_ui", False), "show_ui"),
        "disk_size": _int(obj.get("disk_size", 0), "disk_size", 0, 65535),
        "auth": auth,
        "network": _network(obj.get("network")),
        "root_disk": _root_disk(obj.get("root_disk")),
        "directory": _directories(obj.get("directory", [])),
        "log_command": _strings(obj.get("log_command", DEFAULT_LOG_COMMAND), "log_command"),
        "force_pull": _bool(obj.get("force_pull", False), "force_pull"),
        "pull_only": _bool(obj.get("pull_only", False), "pull_only"),
        "command": _str(obj.get("command", ""), "command"),
        "args": _strings(obj.get("args", []), "args"),
        "work_dir": _str(obj.get("work_dir", ""), "work_dir"),
        "timeout": _str(obj.get("timeout", ""), "timeout"),
        "guest_logs": _optional_bool(obj.get("guest_logs"), "guest_logs"),
        "warm_start": _bool(obj.get("warm_start", False), "warm_start"),
        "ports": _strings(obj.get("ports", []), "ports"),
    }
    if not str(config["url"]).strip():
        raise HandError("url", "must not be empty")
    if not config["pull_only"]:
        for field in ("ssh_user", "ssh_password"):
            if not str(config[field]).strip():
                raise HandError(field, "is required (it may be left out only with pull_only)")
    command = config["log_command"]
    if not command or not command[0]:
        raise HandError("log_command", "must name a command")
    if auth is not None and not auth["username"]:
        raise HandError("auth.username", "must not be empty")
    if not config["command"]:
        for field in ("args", "work_dir", "timeout"):
            if config[field]:
                raise HandError(field, "only applies with command")
    elif config["timeout"]:
        try:
            parse_duration(config["timeout"])
        except ValueError as exc:
            raise HandError("timeout", str(exc)) from None
    seen: set[str] = set()
    for i, label in enumerate(config["ports"]):
        if not label.strip() or label in seen:
            raise HandError(f"ports[{i}]", "must be a port label, listed once")
        seen.add(label)
    if config["pull_only"] and (config["ports"] or config["warm_start"]):
        raise HandError("ports", "does not apply with pull_only")
    return config
