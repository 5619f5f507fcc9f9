"""Shares the tart user must reach: permissions checked, root's files handed over safely.

With ``tart_user``, tart (and so the VM) reads the task's shares as that user. Nomad
creates secrets/ and local/ as root; whatever the user cannot read there is handed to it,
following no link and moving only root-owned files with one link, because Nomad's task
directory is writable by every local user. Other directories are checked, never changed.
"""

from __future__ import annotations

import logging
import os
import stat
from typing import Final

from tart_trio._errors import ConfigError
from tart_trio._host.users import RunAs

log = logging.getLogger("policy")


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


def share_command_dirs(shares: list[tuple[str, str]], user: RunAs | None) -> None:
    """With tart_user, a command's guest reads and writes its shares: (name, path) pairs,
    the task's local/ first, then the allocation's alloc/data and alloc/tmp.

    Nomad makes them 0777. What the user cannot read in local/ (a template rendered with
    ``perms = "600"``) is handed over as for secrets/, with the same care: the guest
    writes there too, so nothing is followed and only root-owned single-link files move.
    The allocation's directories hold other tasks' files: they are checked, never changed.
    """
    if user is None:
        return
    (_, local_dir), *_ = shares
    share_secrets(local_dir, user, "the task's local directory")
    for name, path in shares:
        field = "the task's local directory" if path == local_dir else name
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
