"""The fake virtualization service: boots SSH guests for a `tart run` that is not root.

On a Mac, `tart run` runs as an ordinary user and Virtualization.framework does the
privileged part of running a VM in a system service. The fake's guests need root (mount
and PID namespaces, sshd), so a `tart run` started by another user hands the guest to this
service instead of starting it itself:

    python3 tests/faketart/faketart/vmm.py SOCKET      # as root, for as long as it is needed
    FAKETART_VMM=SOCKET tart run VM                    # as any user

For every connection the service forks a keeper. The keeper receives the guest's stdin,
stdout and console descriptors (SCM_RIGHTS) and the path of the guest spec, checks that
the spec belongs to the connecting user and names that user's uid as the guest user,
starts the guest's init as PID 1 of a new PID namespace, and then:

* ``kill`` on the connection kills the guest;
* the connection closing (``tart run`` died, even by SIGKILL) kills the guest;
* the guest ending is reported as ``{"exit": CODE}``.

The guest user has the caller's uid, gid and supplementary groups, and shares are plain
bind mounts, so inside the guest the shares are exactly as readable as they are to the
user who ran `tart run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_MAX_REQUEST = 1 << 16


# ---------------------------------------------------------------------------
# The client side, used by the `tart run` supervisor.


class RemoteGuest:
    """The subset of ``subprocess.Popen`` the supervisor uses, for a guest the service runs."""

    def __init__(self, sock_path: str, spec_path: str, env: dict, console_fd: int):
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = b""
        self.returncode: int | None = None
        try:
            self._sock.connect(sock_path)
            request = json.dumps({"spec": spec_path, "env": env}).encode()
            socket.send_fds(self._sock, [request], [in_r, out_w, console_fd])
        except OSError:
            for fd in (in_r, in_w, out_r, out_w):
                os.close(fd)
            self._sock.close()
            raise
        os.close(in_r)
        os.close(out_w)
        self.stdin = os.fdopen(in_w, "wb", buffering=0)
        self.stdout = os.fdopen(out_r, "rb", buffering=0)
        reply = self._message(block=True)
        if reply is None or "pid" not in reply:
            self.stdin.close()
            self.stdout.close()
            self._sock.close()
            why = (reply or {}).get("error", "the service closed the connection")
            raise OSError(f"faketart vmm refused the guest: {why}")
        self.pid: int = reply["pid"]

    def _message(self, *, block: bool) -> dict | None:
        while b"\n" not in self._buf:
            if not block and not select.select([self._sock], [], [], 0)[0]:
                return None
            try:
                data = self._sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                return {"exit": -signal.SIGKILL}  # the keeper is gone: so is the guest
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def poll(self) -> int | None:
        if self.returncode is None:
            msg = self._message(block=False)
            if msg is not None and "exit" in msg:
                self._finish(msg["exit"])
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            msg = self._message(block=True)
            if msg is not None and "exit" in msg:
                self._finish(msg["exit"])
        return self.returncode

    def _finish(self, code: int) -> None:
        self.returncode = code
        self._sock.close()

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):
                self._sock.sendall(b"kill\n")


# ---------------------------------------------------------------------------
# The service side (root).


def _peer(conn: socket.socket) -> tuple[int, int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)  # pid, uid, gid


def _refuse(conn: socket.socket, why: str) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"error": why}).encode() + b"\n")


def _groups_of(pid: int) -> set[int]:
    """The supplementary groups of a process (from /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def _check_spec(spec_path: str, pid: int, uid: int) -> str | None:
    try:
        info = os.stat(spec_path)
        with open(spec_path) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        return f"cannot read the guest spec: {e}"
    if info.st_uid != uid or spec.get("uid") != uid or spec.get("share_idmap"):
        return "the guest spec must belong to the caller and name the caller as the guest user"
    if not set(spec.get("groups") or ()) <= _groups_of(pid):
        return "the guest spec names groups the caller is not in"
    return None


def keep(conn: socket.socket) -> int:
    """Run one guest for the caller on ``conn`` until it ends or the caller goes away."""
    from . import linuxsys

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid, uid, _gid = _peer(conn)
    msg, fds, _flags, _addr = socket.recv_fds(conn, _MAX_REQUEST, 3)
    try:
        request = json.loads(msg)
        if len(fds) != 3:
            _refuse(conn, "expected the guest's stdin, stdout and console descriptors")
            return 1
        why = _check_spec(request["spec"], pid, uid)
        if why:
            _refuse(conn, why)
            return 1
        linuxsys.unshare(linuxsys.CLONE_NEWPID)  # the next child is the guest's PID 1
        guest = subprocess.Popen(
            [sys.executable, "-S", "-E", os.path.join(PKG_DIR, "guestinit.py"), request["spec"]],
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            env={str(k): str(v) for k, v in request["env"].items()},
            cwd="/",
            preexec_fn=lambda: linuxsys.set_pdeathsig(signal.SIGKILL),  # noqa: PLW1509
        )
    finally:
        for fd in fds:
            os.close(fd)
    conn.sendall(json.dumps({"pid": guest.pid}).encode() + b"\n")
    exited = os.pidfd_open(guest.pid)
    while True:
        ready = select.select([conn, exited], [], [])[0]
        if exited in ready:
            code = guest.wait()
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            return 0
        data = b""
        with contextlib.suppress(OSError):
            data = conn.recv(4096)
        if not data or b"kill" in data:
            with contextlib.suppress(ProcessLookupError):
                guest.kill()
            if not data:
                guest.wait()
                return 0


def serve(sock_path: str) -> None:
    """Accept callers forever; each gets a keeper process of its own."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    os.chmod(sock_path, 0o666)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:  # pragma: no cover - keeper
            code = 1
            try:
                server.close()
                code = keep(conn)
            finally:
                os._exit(code)
        conn.close()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(PKG_DIR))
    from faketart.vmm import serve as _serve

    _serve(sys.argv[1])
