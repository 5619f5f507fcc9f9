"""Tart's version: what ``tart --version`` says, the oldest Tart the driver supports, and
which task options need a newer one.

Versions were read in Tart's git history (cirruslabs/tart tags up to 2.32.1, openai/tart
2.33.0-2.35.0). The oldest supported Tart is 2.10.0, the first with ``tart set
--random-mac``, which every start runs. Everything else the driver always uses is older:
``tart get --format json`` reports ``OS`` since 2.8.0, named ``--dir`` shares with ``ro``
and ``tag=`` since 2.6.0, ``tart list --format json`` with ``State`` since 1.8.0 and ``tart
ip --resolver arp`` since 1.1.0. Options only some jobs use are checked per job
(:func:`check_task`), before anything is cloned.
"""

from __future__ import annotations

import os
import re
from typing import Final, NamedTuple

from tart_trio._config.task import TaskConfig
from tart_trio._errors import ConfigError
from tart_trio._tart.cli import Tart

Version = tuple[int, int, int]

OLDEST_SUPPORTED: Final[Version] = (2, 10, 0)
_NUMBER: Final = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse(text: str) -> Version | None:
    """``2.35.0`` -> (2, 35, 0); None for a build from source (``SNAPSHOT``) or garbage."""
    match = _NUMBER.search(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def text(version: Version) -> str:
    """(2, 35, 0) -> ``2.35.0``."""
    return ".".join(str(part) for part in version)


class Requirement(NamedTuple):
    """A task option that needs a Tart at least as new as ``since``."""

    field: str
    what: str
    since: Version


def requirements(config: TaskConfig) -> list[Requirement]:
    """What the job's options need of Tart, beyond the oldest supported version."""
    needs = []
    root_disk = config.root_disk
    if root_disk is not None:
        if root_disk.readonly:
            needs.append(Requirement("root_disk.readonly", "--root-disk-opts", (2, 16, 0)))
        if root_disk.sync_mode:
            needs.append(Requirement("root_disk.sync_mode", "--root-disk-opts", (2, 16, 0)))
        if root_disk.caching_mode:
            # Tart 2.16-2.20 take --root-disk-opts but ignore caching= without a word.
            needs.append(
                Requirement("root_disk.caching_mode", "--root-disk-opts caching=", (2, 21, 0))
            )
    if config.network is not None and config.network.softnet_expose:
        needs.append(Requirement("network.softnet_expose", "--net-softnet-expose", (2, 23, 0)))
    return needs


def check_task(config: TaskConfig, installed: Version | None) -> None:
    """Refuse a job whose options the installed Tart lacks (a source build has them all)."""
    if installed is None:
        return
    for need in requirements(config):
        if installed < need.since:
            raise ConfigError(
                need.field,
                f"needs Tart {text(need.since)} or later ({need.what}); this host has Tart "
                f"{text(installed)}: upgrade Tart or remove the option",
            )


#: What ``tart run`` prints when Apple's limit of running macOS VMs is reached: since
#: 2.18.1 Tart's own text (``VMStorageHelper.swift``), before it Virtualization.framework's
#: (``VZErrorDomain Code=6``).
VM_LIMIT_TEXTS: Final = (
    "The number of VMs exceeds the system limit",
    "The maximum supported number of active virtual machines has been reached",
)


def vm_limit_reached(output: str) -> bool:
    """Whether ``tart run``'s output says the VM limit was reached, in any Tart version."""
    return any(limit in output for limit in VM_LIMIT_TEXTS)


def too_old(installed: Version | None) -> str:
    """The health reason when the installed Tart is older than the oldest supported one."""
    if installed is None or installed >= OLDEST_SUPPORTED:
        return ""
    return (
        f"Tart {text(installed)} is older than {text(OLDEST_SUPPORTED)}, the oldest version "
        "this driver supports (every start runs `tart set --random-mac`): upgrade Tart."
    )


_known: dict[tuple[str, int, int, int, int, int], str] = {}


def _identity(tart: Tart) -> tuple[str, int, int, int, int, int]:
    info = os.stat(tart.path)
    uid = tart.user.uid if tart.user is not None else -1
    return tart.path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, uid


async def installed(tart: Tart, *, fresh: bool = False) -> str:
    """``tart --version``; asked again only when the executable changed (or ``fresh``)."""
    key = _identity(tart)
    if fresh or key not in _known:
        _known[key] = (await tart.version()).strip()
    return _known[key]
