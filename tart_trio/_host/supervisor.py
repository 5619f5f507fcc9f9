"""The per-VM supervisor: keeps ``tart run``'s exit status when no plugin is running.

Started by the plugin as ``nomad-driver-tart supervise`` (see ``_host.helpers``). It
detaches (fork, new session), tells the plugin its pid on stdout, runs ``tart run`` with its
output going to the task's stderr FIFO and to a log file, forwards stop requests, and when
``tart run`` ends writes the exit status atomically to the status file. Standard library only: it
must keep working when the plugin process is gone or replaced.

Signals: SIGINT is passed on to ``tart run`` (Tart powers the VM off and exits 0);
SIGTERM kills ``tart run`` at once with SIGKILL; SIGUSR1 says that the guest's address is in
the runtime directory's ``--guest-address-file``.

Port forwards (``--forward``, see ``_host.ports``) are bound before the supervisor
detaches, so a port that cannot be bound is its exit status (``EXIT_PORT_UNAVAILABLE``), and
are served by ``_host.forward`` for as long as ``tart run`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from tart_trio._host import forward, ports
from tart_trio._host.fifo import FifoWriter
from tart_trio._host.safefs import open_own_file, open_private_dir

_CHUNK = 65536


class _RuntimeDir:
    """The task's runtime directory, held open: every file is written relative to it.

    The directory is the plugin's own (root, 0700) inside Nomad's world-writable task
    directory; holding it by descriptor means renaming or replacing its entry there
    cannot redirect what the supervisor writes.
    """

    def __init__(self, path: str) -> None:
        self.fd = open_private_dir(path)

    def write_atomic(self, name: str, data: bytes) -> None:
        tmp = f"{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self.fd)
        fd = open_own_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, dir_fd=self.fd)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def open_log(self, name: str) -> int:
        return open_own_file(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, dir_fd=self.fd)

    def read_small(self, name: str, limit: int = 256) -> bytes:
        """The start of one of our own files; empty when it is missing or not ours."""
        try:
            fd = open_own_file(name, os.O_RDONLY, dir_fd=self.fd)
        except OSError:
            return b""
        try:
            return os.read(fd, limit)
        finally:
            os.close(fd)


def _write_status(runtime: _RuntimeDir, name: str, status: dict[str, Any]) -> None:
    runtime.write_atomic(name, json.dumps(status).encode())


def _serve_forwards(
    args: argparse.Namespace, runtime: _RuntimeDir, bound: list[tuple[ports.Forward, socket.socket]]
) -> None:
    """Start the port forwarder; SIGUSR1 hands it the guest's address from the file."""
    forwarder = forward.Forwarder(bound)
    name = os.path.basename(args.guest_address_file or "guest-address")

    def guest_known(_signum: int, _frame: object) -> None:
        address = runtime.read_small(name).decode("ascii", "replace").strip()
        forwarder.set_guest(address)

    signal.signal(signal.SIGUSR1, guest_known)
    guest_known(signal.SIGUSR1, None)
    forwarder.start()


def _run(
    args: argparse.Namespace,
    runtime: _RuntimeDir,
    bound: list[tuple[ports.Forward, socket.socket]] | None = None,
) -> int:
    log = os.fdopen(runtime.open_log(os.path.basename(args.log_file)), "ab", buffering=0)
    fifo = FifoWriter(args.stderr_fifo)
    started = time.time()
    try:
        child = subprocess.Popen(
            args.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
    except OSError as exc:
        message = f"failed to start tart: {exc}\n".encode()
        log.write(message)
        fifo.write(message)
        _write_status(
            runtime,
            os.path.basename(args.status_file),
            {
                "exit_code": 127,
                "signal": 0,
                "started_at": started,
                "finished_at": time.time(),
                "error": str(exc),
            },
        )
        return 0

    def pass_on(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGKILL)

    signal.signal(signal.SIGINT, pass_on)
    signal.signal(signal.SIGTERM, pass_on)
    if bound:
        _serve_forwards(args, runtime, bound)
    assert child.stdout is not None
    pid_record = json.dumps({"tart_run_pid": child.pid}).encode()
    runtime.write_atomic(os.path.basename(args.pid_file), pid_record)
    while True:
        try:
            data = os.read(child.stdout.fileno(), _CHUNK)
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            break
        if not data:
            break
        log.write(data)
        fifo.write(data)
    while True:
        try:
            returncode = child.wait()
            break
        except InterruptedError:
            continue
    status = {
        "exit_code": returncode if returncode >= 0 else 0,
        "signal": -returncode if returncode < 0 else 0,
        "started_at": started,
        "finished_at": time.time(),
        "finished": datetime.now(UTC).isoformat(),
    }
    _write_status(runtime, os.path.basename(args.status_file), status)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Detach, report our pid on stdout, then supervise the command."""
    parser = argparse.ArgumentParser(prog="nomad-driver-tart supervise")
    parser.add_argument("--status-file", required=True)
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--log-file", required=True)
    parser.add_argument("--stderr-fifo")
    parser.add_argument("--owner", help="<alloc id>/<task> the VM belongs to (for ps readers)")
    parser.add_argument(
        "--forward", action="append", default=[], help="a port forward (see _host.ports)"
    )
    parser.add_argument(
        "--guest-address-file", help="file of the runtime directory with the guest's address"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    where = {os.path.dirname(os.path.abspath(f)) for f in (args.status_file, args.pid_file)}
    where.add(os.path.dirname(os.path.abspath(args.log_file)))
    if len(where) != 1:
        parser.error("--status-file, --pid-file and --log-file must share one directory")
    try:
        runtime = _RuntimeDir(where.pop())
    except OSError as exc:
        sys.stderr.write(f"nomad-driver-tart supervise: the runtime directory is unusable: {exc}\n")
        return 1
    try:
        forwards = [ports.Forward.parse(spec) for spec in args.forward]
    except ValueError as exc:
        parser.error(str(exc))
    bound: list[tuple[ports.Forward, socket.socket]] = []
    if forwards:
        forward.raise_file_limit()
        # Until the plugin tells the guest's address, its signal must not end us.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            for one in forwards:
                bound.append((one, ports.bind(one)))
        except ports.PortUnavailable as exc:
            for _, sock in bound:
                sock.close()
            sys.stderr.write(f"nomad-driver-tart supervise: {exc.strerror}\n")
            return ports.EXIT_PORT_UNAVAILABLE
    pid = os.fork()
    if pid:
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os._exit(_run(args, runtime, bound))
