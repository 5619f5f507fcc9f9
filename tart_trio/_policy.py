"""Operator controls: what a job may ask for, checked before anything is cloned."""

from __future__ import annotations

import fnmatch
import os
import stat
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


def _bits(info: os.stat_result, user: RunAs) -> int:
    """The permission bits that apply to ``user`` for a file with ``info``."""
    if info.st_uid == user.uid:
        return (info.st_mode >> 6) & 0o7
    if info.st_gid == user.gid or info.st_gid in user.groups:
        return (info.st_mode >> 3) & 0o7
    return info.st_mode & 0o7


def _blocking_parent(path: str, user: RunAs) -> str | None:
    """The first directory above ``path`` that ``user`` may not search, if any."""
    parents = []
    current = os.path.dirname(path)
    while True:
        parents.append(current)
        if current == "/":
            break
        current = os.path.dirname(current)
    for parent in reversed(parents):
        try:
            info = os.stat(parent)
        except OSError:
            return parent
        if not _bits(info, user) & 0o1:
            return parent
    return None


def readable_by(path: str, user: RunAs) -> bool:
    """Whether ``user`` can list ``path`` (every parent searchable, the directory readable)."""
    real = os.path.realpath(path)
    try:
        info = os.stat(real)
    except OSError:
        return False
    return _blocking_parent(real, user) is None and _bits(info, user) & 0o5 == 0o5


def share_secrets(secrets_dir: str, user: RunAs) -> None:
    """Make the task's secrets directory readable by ``user``, who shares it with the VM.

    Nomad creates the directory and renders into it as root; whatever the tart user cannot
    read (the directory, or a file rendered with ``perms = "600"``) is handed to that user.
    Group and other permissions are never widened. The directories above it are Nomad's
    (``alloc_dir`` is 0711 by default); if one of them shuts the user out, the start is
    refused with the directory to fix.
    """
    real = os.path.realpath(secrets_dir)
    field = "the task's secrets directory"
    if not os.path.isdir(real):
        raise ConfigError(field, f"{secrets_dir!r} does not exist")
    blocked = _blocking_parent(real, user)
    if blocked is not None:
        raise ConfigError(
            field,
            f"{secrets_dir!r} cannot be reached by tart_user {user.name!r}: it may not "
            f"search {blocked!r} (allow it with `chmod o+x {blocked}`)",
        )
    _hand_over(real, user, directory=True)
    for root, dirs, files in os.walk(real):
        for name in dirs:
            _hand_over(os.path.join(root, name), user, directory=True)
        for name in files:
            _hand_over(os.path.join(root, name), user, directory=False)


def _hand_over(path: str, user: RunAs, *, directory: bool) -> None:
    need = 0o5 if directory else 0o4
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or _bits(info, user) & need == need:
        return
    os.chown(path, user.uid, -1)
    os.chmod(path, stat.S_IMODE(info.st_mode) | (need << 6))


def share_with_tart_user(config: TaskConfig, secrets_dir: str, user: RunAs | None) -> None:
    """With tart_user, the VM's shares must be readable by that user.

    The secrets directory is Nomad's and made readable (see :func:`share_secrets`); a
    ``directory`` mount is the operator's host directory and is never changed: one the
    user cannot read is refused.
    """
    if user is None:
        return
    for i, d in enumerate(config.directory):
        if not readable_by(d.path, user):
            raise ConfigError(
                f"directory[{i}].path",
                f"{d.path!r} is not readable by tart_user {user.name!r}, "
                "which runs tart and so shares it with the VM",
            )
    share_secrets(secrets_dir, user)
