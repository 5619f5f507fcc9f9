"""Operator controls: what a job may ask for, checked before anything is cloned."""

from __future__ import annotations

import fnmatch
import os
from typing import Final

from tart_trio._config import PluginConfig, TaskConfig, network_mode
from tart_trio._errors import ConfigError
from tart_trio._reconcile import OUR_NAME
from tart_trio._tart.cli import RunAs
from tart_trio._tart.images import is_remote

NETWORK_MODES: Final = ("shared", "host", "bridged", "softnet")


def _refuse(field: str, problem: str) -> ConfigError:
    return ConfigError(field, f"{problem} (operator policy in the plugin configuration)")


def check_task(plugin: PluginConfig, config: TaskConfig) -> None:
    """Refuse a job that asks for more than the operator allows."""
    _check_image(plugin, config.url)
    mode = network_mode(config.network)
    if mode not in plugin.allowed_network_modes:
        raise _refuse(
            "network.mode",
            f"{mode!r} networking is not allowed here; allowed: "
            f"{', '.join(plugin.allowed_network_modes) or 'none'}",
        )
    if plugin.allowed_directories:
        for i, directory in enumerate(config.directory):
            real = os.path.realpath(directory.path)
            if not any(_under(real, prefix) for prefix in plugin.allowed_directories):
                raise _refuse(
                    f"directory[{i}].path",
                    f"{directory.path!r} is outside the allowed host directories: "
                    f"{', '.join(plugin.allowed_directories)}",
                )


def _under(path: str, prefix: str) -> bool:
    root = os.path.realpath(prefix)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_image(plugin: PluginConfig, url: str) -> None:
    local = not is_remote(url)
    if local and OUR_NAME.match(url):
        raise _refuse("url", f"{url!r} is another task's VM and can never be cloned")
    patterns = plugin.allowed_images
    if not patterns:
        if local:
            raise _refuse(
                "url",
                f"{url!r} is a local VM; only remote images are allowed "
                "unless allowed_images lists it",
            )
        return
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in patterns):
        raise _refuse("url", f"{url!r} matches none of the allowed images: {', '.join(patterns)}")


def readable_by(path: str, user: RunAs) -> bool:
    """Whether ``user`` can list ``path`` (every parent searchable, the directory readable)."""
    current = os.path.realpath(path)
    need = 0o4 | 0o1  # read and search on the directory itself
    while True:
        try:
            info = os.stat(current)
        except OSError:
            return False
        if info.st_uid == user.uid:
            bits = (info.st_mode >> 6) & 0o7
        elif info.st_gid in user.groups or info.st_gid == user.gid:
            bits = (info.st_mode >> 3) & 0o7
        else:
            bits = info.st_mode & 0o7
        if bits & need != need:
            return False
        if current == "/":
            return True
        current = os.path.dirname(current)
        need = 0o1  # parents only need search


def check_shares_readable(config: TaskConfig, secrets_dir: str, user: RunAs | None) -> None:
    """With tart_user, every shared host directory must be readable by that user."""
    if user is None:
        return
    shares = [("the task's secrets directory", secrets_dir)]
    shares += [(f"directory[{i}].path", d.path) for i, d in enumerate(config.directory)]
    for field, path in shares:
        if not readable_by(path, user):
            raise ConfigError(
                field,
                f"{path!r} is not readable by tart_user {user.name!r}, "
                "which runs tart and so shares it with the VM",
            )
