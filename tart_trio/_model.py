"""Domain types the driver hands to the rpc layer (which turns them into protobuf)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

Health = Literal["undetected", "unhealthy", "healthy"]
AttributeValue = str | int | float | bool


class PluginInfo(msgspec.Struct, frozen=True):
    """What the plugin tells Nomad about itself."""

    name: str
    version: str
    api_versions: tuple[str, ...]


class Capabilities(msgspec.Struct, frozen=True):
    """The driver features Nomad may rely on."""

    send_signals: bool
    exec: bool
    fs_isolation: Literal["none", "chroot", "image"]
    network_isolation_modes: tuple[Literal["host", "group", "task", "none"], ...]
    must_create_network: bool
    mount_configs: Literal["any", "none"]
    disable_log_collection: bool
    dynamic_workload_users: bool


class Fingerprint(msgspec.Struct, frozen=True):
    """One fingerprint report: node attributes and the driver's health."""

    attributes: dict[str, AttributeValue]
    health: Health
    description: str


class TaskEvent(msgspec.Struct, frozen=True):
    """A line in ``nomad alloc status`` for one task."""

    task_id: str
    alloc_id: str
    task_name: str
    timestamp: datetime
    message: str
    annotations: dict[str, str] = {}
