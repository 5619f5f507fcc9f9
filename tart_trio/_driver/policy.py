"""Operator controls: what a job may ask for, checked before anything is cloned."""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from typing import Final

from tart_trio._config.plugin import PluginConfig
from tart_trio._config.task import TaskConfig, network_mode
from tart_trio._driver.names import OUR_NAME
from tart_trio._errors import ConfigError
from tart_trio._tart.cli import RunAs
from tart_trio._tart.images import is_remote

log = logging.getLogger("policy")

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


def share_secrets(
    secrets_dir: str, user: RunAs, field: str = "the task's secrets directory"
) -> None:
    """Make the task's secrets directory readable by ``user``, who shares it with the VM.

    Nomad creates the directory and renders into it as root; whatever the tart user cannot
    read (the directory, or a file rendered with ``perms = "600"``) is handed to that user.
    Group and other permissions are never widened. The directories above it are Nomad's
    (``alloc_dir`` is 0711 by default); if one of them shuts the user out, the start is
    refused with the directory to fix.

    The plugin is root and Nomad's task directory is world-writable on macOS, so nothing
    here follows a symlink (the directory itself included) and only root-owned files with a
    single link are handed over: another local user cannot plant a link to a file elsewhere
    and have it given to the tart user.
    """
    path = os.path.abspath(secrets_dir)
    blocked = _blocking_parent(path, user)
    if blocked is not None:
        raise ConfigError(
            field,
            f"{secrets_dir!r} cannot be reached by tart_user {user.name!r}: it may not "
            f"search {blocked!r} (allow it with `chmod o+x {blocked}`)",
        )
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(field, f"{secrets_dir!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(
            field, f"{secrets_dir!r} is not a directory (or is a symlink): {exc.strerror}"
        ) from None
    try:
        _hand_over(top, path, user)
        for root, dirs, files, root_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in dirs + files:
                _hand_over_entry(
                    root_fd, os.path.normpath(os.path.join(path, root, name)), name, user
                )
    finally:
        os.close(top)


_OPEN_ENTRY: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _hand_over_entry(dir_fd: int, path: str, name: str, user: RunAs) -> None:
    try:
        fd = os.open(name, _OPEN_ENTRY, dir_fd=dir_fd)
    except OSError:
        return  # a symlink (ELOOP), a socket, or gone meanwhile: not ours to hand over
    try:
        _hand_over(fd, path, user)
    finally:
        os.close(fd)


def _hand_over(fd: int, path: str, user: RunAs) -> None:
    info = os.fstat(fd)
    directory = stat.S_ISDIR(info.st_mode)
    if not directory and not stat.S_ISREG(info.st_mode):
        return
    need = 0o5 if directory else 0o4
    if _bits(info, user) & need == need:
        return
    if info.st_uid != 0 or (not directory and info.st_nlink != 1):
        log.warning(
            "a secret the tart user cannot read was left alone: only root-owned files with "
            "one link are handed over",
            extra={"path": path, "owner": info.st_uid, "links": info.st_nlink},
        )
        return
    os.fchown(fd, user.uid, -1)
    os.fchmod(fd, stat.S_IMODE(info.st_mode) | (need << 6))


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


def share_command_dirs(local_dir: str, alloc_dir: str, user: RunAs | None) -> None:
    """With tart_user, a command's guest reads and writes the task's local/ and alloc/.

    Nomad makes both 0777. What the user cannot read in local/ (a template rendered with
    ``perms = "600"``) is handed over as for secrets/, with the same care: the guest
    writes there too, so nothing is followed and only root-owned single-link files move.
    alloc/ holds other tasks' files and logs: it is checked, never changed.
    """
    if user is None:
        return
    share_secrets(local_dir, user, "the task's local directory")
    for path, field in ((local_dir, "the task's local directory"), (alloc_dir, "alloc")):
        try:
            info = os.stat(path)
        except OSError as exc:
            raise ConfigError(field, f"{path!r} is not usable: {exc.strerror}") from None
        blocked = _blocking_parent(os.path.abspath(path), user)
        if blocked is not None or _bits(info, user) & 0o7 != 0o7:
            raise ConfigError(
                field,
                f"{path!r} is not writable by tart_user {user.name!r}, which shares it "
                "with the VM for the command to read and write (Nomad makes it 0777)",
            )
