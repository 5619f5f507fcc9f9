"""Processes that act on one VM: ``tart`` commands that name it, and its supervisor.

A plugin that Nomad SIGKILLs in the middle of StartTask leaves behind whatever it had
started in sessions of their own: a ``tart clone`` or ``tart set`` still running, or the
supervisor it had just launched with its ``tart run``. Nomad then starts the task again,
and the VM gets the same name, so a new start first finds and ends these. The supervisor
also names the task it works for (``--owner``), so the VM of a task the plugin does not
know can be told apart from a sibling task's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from urllib.parse import quote, unquote

import msgspec
import trio

from tart_trio._host import helpers, proc

#: Words that mark a supervisor in a process's command line (argv joined by spaces, as
#: ``ps`` shows it): today's subcommand, and the module path that releases before it used.
SUPERVISOR_MARKERS = (
    f"{helpers.SUPERVISE} --status-file ",
    f"-m {helpers.LEGACY_SUPERVISOR_MODULE} ",
)
OWNER_FLAG = "--owner"


class VMProcess(msgspec.Struct, frozen=True):
    """A live process acting on a VM, with the start token that guards against pid reuse."""

    pid: int
    token: str | None
    argv: tuple[str, ...]

    @property
    def owner(self) -> str | None:
        """``<alloc id>/<task name>`` a supervisor works for (None for tart commands)."""
        if OWNER_FLAG not in self.argv[:-1]:
            return None
        return unquote(self.argv[self.argv.index(OWNER_FLAG) + 1])


def owner_argument(alloc_id: str, task_name: str) -> list[str]:
    """The supervisor's ``--owner`` argument; quoted so that it is one word in any ``ps``."""
    return [OWNER_FLAG, quote(f"{alloc_id}/{task_name}", safe="/")]


def _linux_commands() -> list[tuple[int, tuple[str, ...]]]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if raw:
            argv = raw.rstrip(b"\0").split(b"\0")
            found.append((int(entry.name), tuple(a.decode(errors="replace") for a in argv)))
    return found


def _ps_commands() -> list[tuple[int, tuple[str, ...]]]:
    """``ps`` joins each argv with spaces: a VM name and a quoted owner stay one word."""
    out = subprocess.run(
        ["ps", "-axww", "-o", "pid=,command="], capture_output=True, text=True, check=False
    ).stdout
    found = []
    for line in out.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit():
            found.append((int(pid), tuple(command.split())))
    return found


def is_supervisor(argv: tuple[str, ...]) -> bool:
    """Whether a command line is a VM supervisor's, of this release or an earlier one."""
    joined = " ".join(argv) + " "
    return any(marker in joined for marker in SUPERVISOR_MARKERS)


def _acts_on(argv: tuple[str, ...], vm_name: str, tart_name: str) -> bool:
    """A tart command naming the VM, or the supervisor running it (possibly wrapped)."""
    if vm_name not in argv:
        return False
    if is_supervisor(argv):
        return True
    at = argv.index(vm_name)
    return any(os.path.basename(arg) == tart_name for arg in argv[:at])


def _scan(vm_name: str, tart_path: str) -> list[VMProcess]:
    commands = _linux_commands() if sys.platform == "linux" else _ps_commands()
    me = os.getpid()
    tart_name = os.path.basename(tart_path)
    found = []
    for pid, argv in commands:
        if pid != me and _acts_on(argv, vm_name, tart_name):
            token = proc.start_time(pid)
            if token is not None:
                found.append(VMProcess(pid=pid, token=token, argv=argv))
    return found


async def find(vm_name: str, tart_path: str) -> list[VMProcess]:
    """Live processes acting on ``vm_name``: tart commands and supervisors."""
    return await trio.to_thread.run_sync(_scan, vm_name, tart_path)


async def end(processes: list[VMProcess], grace: float) -> list[VMProcess]:
    """SIGTERM each, wait up to ``grace`` seconds, SIGKILL what is left; the survivors.

    Tart has no SIGTERM handler, so a tart command ends at once (a ``tart run`` takes its
    VM with it); the supervisor kills its ``tart run`` and records the exit before it ends.
    """
    for process in processes:
        proc.signal_process(process.pid, process.token, signal.SIGTERM)
    with trio.move_on_after(grace):
        for process in processes:
            await proc.wait_exit(process.pid, process.token)
    for process in processes:
        proc.signal_process(process.pid, process.token, signal.SIGKILL)
    with trio.move_on_after(grace):
        for process in processes:
            await proc.wait_exit(process.pid, process.token)
    return [p for p in processes if proc.alive(p.pid, p.token)]
