"""Thin ctypes wrappers for the Linux syscalls the fake guest needs.

Only stdlib.  Everything here is Linux-specific and most of it needs root
(CAP_SYS_ADMIN).  Callers check :func:`namespaces_available` first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

PR_SET_PDEATHSIG = 1

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18

# New mount API (the syscall numbers are the same on x86_64 and aarch64).
SYS_open_tree = 428
SYS_move_mount = 429
SYS_mount_setattr = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send *sig* to us when our parent thread dies."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    s = source.encode() if source is not None else None
    f = fstype.encode() if fstype is not None else None
    d = data.encode() if data is not None else None
    _check(_libc.mount(s, target.encode(), f, ctypes.c_ulong(flags), d), f"mount {target}")


def bind(source: str, target: str, *, readonly: bool = False, recursive: bool = False) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if readonly:
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def idmapped_bind(source: str, target: str, userns_fd: int, *, readonly: bool = False) -> None:
    """Bind *source* at *target* with an idmapped mount (kernel >= 5.12)."""
    fd = _check(
        _libc.syscall(
            SYS_open_tree,
            AT_FDCWD,
            source.encode(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        ),
        f"open_tree {source}",
    )
    try:
        attr_set = MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if readonly else 0)
        attr = ctypes.create_string_buffer(struct.pack("QQQQ", attr_set, 0, 0, userns_fd), 32)
        _check(
            _libc.syscall(SYS_mount_setattr, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE, attr, 32),
            "mount_setattr",
        )
        _check(
            _libc.syscall(
                SYS_move_mount, fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH
            ),
            f"move_mount {target}",
        )
    finally:
        os.close(fd)


def make_userns_fd(uid: int, gid: int, proc: str = "/proc") -> int:
    """Return an fd to a user namespace mapping in-namespace 0 to host *uid*/*gid*.

    Used as the idmapping of shared-directory mounts: files owned by host root
    appear owned by the guest user, like a Mac host user sharing with ``admin``.
    Every other id maps to itself (but *uid*/*gid*, taken by root), so a directory of
    another owner, such as Nomad's 0777 ``nobody`` task directories, keeps its owner and
    stays writable through its mode: the kernel refuses writes to inodes whose owner
    the mount cannot map, while Tart's file server on a Mac writes as the user running
    ``tart``. *proc* must be a procfs of our own PID namespace.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(w)
            if _libc.unshare(CLONE_NEWUSER) != 0:
                os._exit(3)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        import time

        mine = os.readlink(f"{proc}/self/ns/user")
        deadline = time.monotonic() + 5
        while True:
            try:
                if os.readlink(f"{proc}/{pid}/ns/user") != mine:
                    break
            except OSError:
                pass
            wpid, _status = os.waitpid(pid, os.WNOHANG)
            if wpid:
                raise OSError("user namespace helper exited early")
            if time.monotonic() > deadline:
                raise OSError("user namespace helper did not unshare")
            time.sleep(0.0005)
        with open(f"{proc}/{pid}/uid_map", "w") as f:
            f.write(_id_map(uid))
        with open(f"{proc}/{pid}/setgroups", "w") as f:
            f.write("deny")
        with open(f"{proc}/{pid}/gid_map", "w") as f:
            f.write(_id_map(gid))
        return os.open(f"{proc}/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(w)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _id_map(guest: int, top: int = 1 << 31) -> str:
    """0 <-> *guest*; every other id but *guest* to itself (uid_map/gid_map lines)."""
    lines = [f"0 {guest} 1"]
    if guest > 1:
        lines.append(f"1 1 {guest - 1}")
    lines.append(f"{guest + 1} {guest + 1} {top - guest - 1}")
    return "\n".join(lines) + "\n"


def namespaces_available() -> bool:
    """True when we may create mount and PID namespaces (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return False
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:  # pragma: no cover - child
        try:
            os._exit(0 if _libc.unshare(CLONE_NEWNS | CLONE_NEWPID) == 0 else 1)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
