"""Files the root plugin and its supervisors write next to Nomad's task directory.

Nomad makes a task's directory writable by every local user, and the plugin runs as root:
what it creates there must not be redirected by a symlink or a hard link planted by
someone else. Standard library only (the supervisor uses it too).
"""

from __future__ import annotations

import os
import stat
from typing import Final

_NOFOLLOW: Final = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path that another user could have planted or redirected."""


def _ours_alone(info: os.stat_result) -> bool:
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def make_private_dir(path: str) -> None:
    """Create ``path`` (0700), or accept it if it already is a directory of our own alone.

    Anything else in its place (a symlink, a file, another owner's directory) raises
    UnsafePath; it is never followed or reused.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or not _ours_alone(info):
            raise UnsafePath(
                f"{path} exists but is not the driver's own directory (a symlink, another "
                "owner, or writable by others); remove it and restart the task"
            ) from None


def open_private_dir(path: str) -> int:
    """An fd of the directory at ``path``: a real directory we own that nobody else writes."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    if not _ours_alone(os.fstat(fd)):
        os.close(fd)
        raise UnsafePath(f"{path} is not a directory of the driver's own")
    return fd


def open_own_file(path: str, flags: int, mode: int = 0o600, dir_fd: int | None = None) -> int:
    """Open (or create) a regular file of our own with one link; never through a symlink."""
    fd = os.open(path, flags | _NOFOLLOW, mode, dir_fd=dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        os.close(fd)
        raise UnsafePath(f"{path} is not a file of our own (a link, or another owner)")
    return fd
