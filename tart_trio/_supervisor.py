"""The per-VM supervisor: keeps ``tart run``'s exit status when no plugin is running.

Started by the plugin as ``python -m tart_trio._supervisor``. It detaches (fork, new
session), tells the plugin its pid on stdout, runs ``tart run`` with its output going to
the task's stderr FIFO and to a log file, forwards stop requests, and when ``tart run``
ends writes the exit status atomically to the status file. Standard library only: it
must keep working when the plugin process is gone or replaced.

Signals: SIGINT is passed on to ``tart run`` (Tart powers the VM off and exits 0);
SIGTERM kills ``tart run`` at once with SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from tart_trio._fifo import FifoWriter

_CHUNK = 65536


def _write_status(path: str, status: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(status, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _run_as(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``tart run`` as the configured tart user (the supervisor itself stays root)."""
    if args.uid is None:
        return {}
    groups = [int(g) for g in args.groups.split(",") if g]
    return {"user": args.uid, "group": args.gid, "extra_groups": groups}


def _run(args: argparse.Namespace) -> int:
    log = open(args.log_file, "ab", buffering=0)  # noqa: SIM115 - lives as long as the VM
    fifo = FifoWriter(args.stderr_fifo)
    started = time.time()
    try:
        child = subprocess.Popen(
            args.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
            **_run_as(args),
        )
    except OSError as exc:
        message = f"failed to start tart: {exc}\n".encode()
        log.write(message)
        fifo.write(message)
        _write_status(
            args.status_file,
            {
                "exit_code": 127,
                "signal": 0,
                "started_at": started,
                "finished_at": time.time(),
                "error": str(exc),
            },
        )
        return 0

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGKILL)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    assert child.stdout is not None
    with open(args.pid_file + ".tmp", "w", encoding="utf-8") as out:
        json.dump({"tart_run_pid": child.pid}, out)
    os.replace(args.pid_file + ".tmp", args.pid_file)
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
    _write_status(args.status_file, status)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Detach, report our pid on stdout, then supervise the command."""
    parser = argparse.ArgumentParser(prog="tart_trio._supervisor")
    parser.add_argument("--status-file", required=True)
    parser.add_argument("--pid-file", required=True)
    parser.add_argument("--log-file", required=True)
    parser.add_argument("--stderr-fifo")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--groups", default="")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
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
    try:
        code = _run(args)
    finally:
        pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
