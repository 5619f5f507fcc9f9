"""Guest addresses (127.0.0.N, unique machine-wide) and the fake DHCP lease table."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

from .common import read_json, write_json_atomic

ADDR_MIN, ADDR_MAX = 2, 254


def addr_dir() -> str:
    """Machine-wide directory of address locks (shared by every TART_HOME and test process).

    Non-root users that cannot write the shared directory (no sshd for them
    anyway) fall back to a per-user one.
    """
    d = os.environ.get("FAKETART_ADDR_DIR", "/tmp/faketart-addrs")
    try:
        os.mkdir(d)
        os.chmod(d, 0o1777)
    except FileExistsError:
        pass
    except OSError:
        return _per_user(d)
    if os.geteuid() != 0 and not os.access(d, os.W_OK):
        return _per_user(d)
    return d


def _per_user(d: str) -> str:
    d = f"{d}-{os.geteuid()}"
    os.makedirs(d, exist_ok=True)
    return d


def _port_free(addr: str) -> bool:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, 22))
        return True
    except OSError as e:
        # EACCES: not root, so there will be no sshd either; the lock decides.
        return e.errno == errno.EACCES
    finally:
        s.close()


class Lease:
    """An address held by this process (flock on a file under addr_dir())."""

    def __init__(self, addr: str, fd: int):
        self.addr = addr
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_lock(path: str) -> int:
    """Open (or create) an address lock file; -1 when that is not possible.

    Existing files are opened without O_CREAT: with fs.protected_regular, O_CREAT on
    another user's file in the sticky, world-writable lock directory fails even for
    root, and the lock files are shared by every user running the fake.
    """
    for flags in (os.O_RDWR, os.O_RDWR | os.O_CREAT | os.O_EXCL):
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o666)
        except (FileNotFoundError, FileExistsError):
            continue
        except OSError:
            return -1
    return -1


def allocate(owner: str, prefer: list[str] | None = None) -> Lease:
    d = addr_dir()
    candidates = [a for a in (prefer or []) if a.startswith("127.0.0.")]
    candidates += [f"127.0.0.{n}" for n in range(ADDR_MIN, ADDR_MAX + 1)]
    seen = set()
    for addr in candidates:
        if addr in seen:
            continue
        seen.add(addr)
        path = os.path.join(d, f"{addr}.lock")
        fd = _open_lock(path)
        if fd < 0:
            continue
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if not _port_free(addr):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {owner}\n".encode(), 0)
        return Lease(addr, fd)
    raise OSError("no free loopback address for the guest (127.0.0.2-254 all busy)")


def addr_in_use(addr: str) -> bool:
    """True while some process holds the address lock."""
    path = os.path.join(addr_dir(), f"{addr}.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# DHCP leases: like /var/db/dhcpd_leases, but per TART_HOME.


def leases_path(home: str) -> str:
    return os.path.join(home, "faketart-dhcpd_leases.json")


def _locked(home: str):
    fd = os.open(leases_path(home) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def read_leases(home: str) -> list[dict]:
    data = read_json(leases_path(home), [])
    return data if isinstance(data, list) else []


def add_lease(home: str, mac: str, ip: str, name: str, duration: float) -> None:
    fd = _locked(home)
    try:
        now = time.time()
        leases = [
            le
            for le in read_leases(home)
            if le.get("expires", 0) > now
            and not (le.get("hw_address") == mac and le.get("ip_address") == ip)
        ]
        leases.append(
            {
                "name": name,
                "ip_address": ip,
                "hw_address": mac,
                "start": now,
                "expires": now + duration,
            }
        )
        write_json_atomic(leases_path(home), leases)
    finally:
        os.close(fd)


def drop_leases(home: str, mac: str) -> None:
    fd = _locked(home)
    try:
        leases = [le for le in read_leases(home) if le.get("hw_address") != mac]
        write_json_atomic(leases_path(home), leases)
    finally:
        os.close(fd)


def lookup_lease(home: str, mac: str) -> str | None:
    now = time.time()
    best = None
    for le in read_leases(home):
        fresh = le.get("hw_address") == mac and le.get("expires", 0) > now
        if fresh and (best is None or le.get("start", 0) >= best.get("start", 0)):
            best = le
    return best.get("ip_address") if best else None
