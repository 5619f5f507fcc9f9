"""Errors, TART_HOME, locks and small file helpers shared by all commands."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import sys
import time

DEFAULT_VERSION = "2.35.0"


def tart_version() -> tuple[int, ...]:
    """The Tart version the fake plays: ``$FAKETART_VERSION`` (e.g. ``2.15.0``) or 2.35.0.

    Flags a version does not have are unknown options (exit 64), and texts that changed
    follow the version (see docs/fake-tart.md, "Tart versions").
    """
    text = os.environ.get("FAKETART_VERSION") or DEFAULT_VERSION
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def at_least(version: str) -> bool:
    """Whether the played Tart version is ``version`` or newer."""
    return tart_version() >= tuple(int(p) for p in version.split("."))


# ---------------------------------------------------------------------------
# Errors.  Each maps to one of Tart's three error paths (tart-cli.md §1.2).


class TartError(Exception):
    """Base: ``render()`` gives the stderr text, ``code`` the exit status."""

    code = 1

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def render(self) -> str:
        return self.message


class RuntimeErr(TartError):
    """Tart's ``RuntimeError``: bare message, exit 1 (2 for the VM-state cases)."""


class SwiftErr(TartError):
    """Any other Swift error: ``Error: <description>``, exit 1."""

    def render(self) -> str:
        return f"Error: {self.message}"


class UsageErr(TartError):
    """ArgumentParser ``ValidationError`` / parse error: exit 64 with usage."""

    code = 64

    def __init__(self, message: str, help_line: str | None = None):
        super().__init__(message, 64)
        self.help_line = help_line


class Verbatim(TartError):
    """Text printed exactly as given (failure knobs)."""


class Cancelled(Exception):
    """SIGINT: Tart cancels the running command's task (``Error: CancellationError()``)."""


def vm_does_not_exist(name: str) -> RuntimeErr:
    return RuntimeErr(f'the specified VM "{name}" does not exist', 2)


# ---------------------------------------------------------------------------
# Output


def out(line: str = "") -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


def err(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass


# ---------------------------------------------------------------------------
# TART_HOME


def home_path() -> str:
    h = os.environ.get("TART_HOME")
    if not h:
        h = os.path.join(os.path.expanduser("~"), ".tart")
    return os.path.abspath(os.path.expanduser(h))


def tart_home() -> str:
    h = home_path()
    try:
        os.makedirs(h, exist_ok=True)
    except OSError as e:
        raise RuntimeErr(
            f"TART_HOME is invalid: {h} does not exist, yet we can't create it: {e.strerror}"
        ) from e
    return h


# ---------------------------------------------------------------------------
# JSON helpers


def read_json(path: str, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read() or b"null")
    except FileNotFoundError:
        return default
    except (OSError, ValueError):
        return default


def write_json_atomic(path: str, data, *, dir_fd: int | None = None) -> None:
    payload = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
    name = os.path.basename(path) if dir_fd is not None else path
    tmp = f"{name}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, payload)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def swift_pretty_json(data) -> str:
    """Foundation's ``.prettyPrinted`` style: 2-space indent, ``"key" : value``."""
    return json.dumps(data, indent=2, separators=(",", " : "), ensure_ascii=False)


def iso_utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def relative_time(ts: float) -> str:
    delta = max(0, int(time.time() - ts))
    for unit, secs in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if delta >= secs:
            n = delta // secs
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return f"{delta} second{'' if delta == 1 else 's'} ago"


# ---------------------------------------------------------------------------
# fcntl (POSIX record) locks, exactly like Tart's PIDLock on config.json.
#
# Beware the POSIX rule: closing *any* fd of a file drops all of this
# process's locks on it.  Paths locked by this process are remembered so that
# ``lock_holder`` never opens (and closes) them.

_F_FLOCK = "hhqqi4x"
_locked_here: dict[str, int] = {}


def lock_holder(path: str) -> int | None:
    """PID holding a write lock on *path* (F_GETLK), or None."""
    real = os.path.realpath(path)
    if real in _locked_here:
        return os.getpid()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        req = struct.pack(_F_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        res = fcntl.fcntl(fd, fcntl.F_GETLK, req)
        l_type, _w, _s, _l, l_pid = struct.unpack(_F_FLOCK, res)
        if l_type == fcntl.F_UNLCK:
            return None
        return l_pid or None
    finally:
        os.close(fd)


def try_write_lock(path: str) -> int | None:
    """Take a non-blocking F_WRLCK on *path*; returns the fd to keep, or None."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack(_F_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError:
        os.close(fd)
        return None
    _locked_here[os.path.realpath(path)] = fd
    return fd


class DirFlock:
    """``flock`` on a directory, like Tart's global ``$TART_HOME`` lock."""

    def __init__(self, path: str, *, on_wait=None):
        self.path = path
        self.on_wait = on_wait
        self.fd = -1

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self.on_wait:
                self.on_wait()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = -1


# ---------------------------------------------------------------------------
# Files


def sparse_copy(src: str, dst: str) -> None:
    """Copy a (possibly huge, sparse) file copying only its data extents."""
    size = os.stat(src).st_size
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(dfd, size)
            pos = 0
            while pos < size:
                try:
                    data = os.lseek(sfd, pos, os.SEEK_DATA)
                except OSError:
                    break  # ENXIO: no more data
                hole = os.lseek(sfd, data, os.SEEK_HOLE)
                off = data
                while off < hole:
                    chunk = os.pread(sfd, min(1 << 20, hole - off), off)
                    if not chunk:
                        break
                    os.pwrite(dfd, chunk, off)
                    off += len(chunk)
                pos = hole
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def allocated_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def apparent_bytes(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def touch_access(path: str, when: float | None = None) -> None:
    """Tart sets a VM directory's access date on every open (URL+AccessDate.swift): utimes(2)
    with whole seconds, the access date given (default now) and, as modification date,
    the previous access date."""
    try:
        st = os.stat(path)
        atime = int(time.time() if when is None else when)
        os.utime(path, (atime, int(st.st_atime)))
    except OSError:
        pass
