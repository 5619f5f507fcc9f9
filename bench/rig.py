"""The test rig, reused: the Go Nomad-client stand-in, the plugin and the fake Tart host.

Everything a benchmark starts lives under one scratch directory and is torn down on the
way out, even on failure: nomadsim quits (killing the plugins it launched), the fake's
teardown kills every ``tart run`` and guest of our ``TART_HOME``, and a final sweep
SIGKILLs anything else that still carries our ``TART_HOME`` (the detached VM supervisors).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from tests.conformance.nomadsim import NomadSim, open_nomadsim
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart, pid_alive
from tests.plugin_process import plugin_command

SCRATCH_PREFIX = "tart-bench-"
PASSWORD = "admin"


def scratch_root() -> Path:
    return Path(tempfile.gettempdir())


def sweep_stale() -> list[str]:
    """Kill what an earlier, interrupted bench run left behind; remove its scratch."""
    notes = []
    for old in scratch_root().glob(f"{SCRATCH_PREFIX}*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and pid_alive(int(pid)):
            continue  # a bench that is still running
        home = old / "tart-home"
        if home.is_dir():
            notes += [f"killed leftover pid {p}" for p in kill_by_env("TART_HOME", str(home))]
            with contextlib.suppress(Exception):
                FakeTart(home, old).cleanup()
        shutil.rmtree(old, ignore_errors=True)
    return notes


def kill_by_env(key: str, value: str) -> list[int]:
    """SIGKILL every live process (but us) whose environment holds ``key=value``."""
    mark = f"{key}={value}".encode()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if mark in env and pid_alive(int(entry)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
    return killed


def job_hcl(
    *,
    name: str = "bench",
    log_command: Sequence[str] | None = None,
    directories: Iterable[tuple[str, str]] = (),
    image: str = LINUX_IMAGE,
) -> str:
    """A one-task job for ``driver = "tart"`` (Linux image: no 2-macOS-VM limit)."""
    lines = [
        f'        url = "{image}"',
        '        ssh_user = "admin"',
        f'        ssh_password = "{PASSWORD}"',
    ]
    if log_command is not None:
        lines.append(f"        log_command = {json.dumps(list(log_command))}")
    for dir_name, path in directories:
        lines += [
            "        directory {",
            f'          name = "{dir_name}"',
            f'          path = "{path}"',
            "        }",
        ]
    body = "\n".join(lines)
    return (
        f'job "{name}" {{\n  group "g" {{\n    task "vm" {{\n      driver = "tart"\n'
        f"      config {{\n{body}\n      }}\n    }}\n  }}\n}}\n"
    )


@dataclass(frozen=True)
class TartCall:
    """One timed ``tart`` invocation (``end`` is None for ``tart run``: it becomes the VM)."""

    start: float
    end: float | None
    argv: tuple[str, ...]


class Rig:
    """nomadsim + the fake Tart host + our plugin, under one scratch directory."""

    def __init__(self, root: Path, sim: NomadSim, fake: FakeTart) -> None:
        self.root = root
        self.sim = sim
        self.fake = fake
        self.tart_log = root / "tart-calls.log"
        self.wrapper = root / "tart-timed"
        self.allocs = root / "allocs"
        self.allocs.mkdir(exist_ok=True)
        (root / "sock").mkdir(exist_ok=True)
        self._write_wrapper()
        self.plugin_pid: int | None = None

    def _write_wrapper(self) -> None:
        """A bash wrapper that logs start/end of every tart call ($EPOCHREALTIME: no fork).

        ``tart run`` is exec'd (it must receive the supervisor's signals itself).
        """
        real = self.fake.tart_path
        self.wrapper.write_text(
            "#!/bin/bash\n"
            "s=$EPOCHREALTIME\n"
            'if [ "$1" = run ]; then\n'
            f"  printf '%s - %s\\n' \"$s\" \"$*\" >> '{self.tart_log}'\n"
            f"  exec '{real}' \"$@\"\n"
            "fi\n"
            f"'{real}' \"$@\"\n"
            "rc=$?\n"
            f'printf \'%s %s %s\\n\' "$s" "$EPOCHREALTIME" "$*" >> \'{self.tart_log}\'\n'
            "exit $rc\n"
        )
        self.wrapper.chmod(0o755)

    def plugin_hcl(self, **extra: str) -> str:
        options = {"tart_path": str(self.wrapper), "boot_timeout": "120s", **extra}
        body = "\n".join(f'    {k} = "{v}"' for k, v in options.items())
        return f'plugin "nomad-driver-tart" {{\n  config {{\n{body}\n  }}\n}}\n'

    def plugin_env(self) -> dict[str, str]:
        return {**self.fake.env(), "PLUGIN_UNIX_SOCKET_DIR": str(self.root / "sock")}

    async def launch(self, *, log_name: str = "plugin.log") -> dict[str, Any]:
        """Launch the plugin as Nomad's real instance (SetConfig with nomad_config)."""
        launched = await self.sim.call(
            "launch",
            cmd=plugin_command(),
            env=self.plugin_env(),
            log_file=str(self.root / log_name),
        )
        self.plugin_pid = int(launched["pid"])
        await self.sim.call("set_config", hcl=self.plugin_hcl(), with_nomad_config=True)
        return launched

    async def start(self, job: str, *, alloc_id: str | None = None) -> dict[str, Any]:
        """StartTask; the result gets ``t_send``/``t_reply`` wall times of this process."""
        alloc = alloc_id or str(uuid.uuid4())
        task = {
            "alloc_id": alloc,
            "alloc_dir": str(self.allocs / alloc),
            "env": {"SSH_PASSWORD": PASSWORD},
            "resources": {"cpu_shares": 1000, "memory_mb": 1024, "cpuset_cpus": "0"},
        }
        t_send = time.time()
        started = await self.sim.call("start_task", task=task, job_hcl=job, create_alloc_dir=True)
        started["t_reply"] = time.time()
        started["t_send"] = t_send
        started["vm"] = f"nomad-{alloc}"
        return started

    async def destroy_all(self, task_ids: Iterable[str]) -> None:
        """Stop (power off) and destroy tasks concurrently; errors are ignored."""

        async def one(task_id: str) -> None:
            with contextlib.suppress(Exception):
                await self.sim.call(
                    "stop_task", task_id=task_id, timeout_seconds=5, signal="SIGKILL"
                )
            with contextlib.suppress(Exception):
                await self.sim.call("destroy_task", task_id=task_id)

        async with trio.open_nursery() as nursery:
            for task_id in task_ids:
                nursery.start_soon(one, task_id)

    def tart_calls(self) -> list[TartCall]:
        try:
            text = self.tart_log.read_text()
        except FileNotFoundError:
            return []
        calls = []
        for line in text.splitlines():
            start, end, *argv = line.split(" ")
            calls.append(TartCall(float(start), None if end == "-" else float(end), tuple(argv)))
        return calls

    def boot_window(self, vm: str) -> tuple[float, float] | None:
        """When the fake VM was booting: ``tart run`` start to booted and IP visible."""
        rt = self.fake.runtime(vm)
        ends = [t for t in (rt.get("booted_at"), rt.get("ip_visible_at")) if t]
        runs = [c for c in self.tart_calls() if c.argv[:2] == ("run", vm)]
        if not runs or len(ends) < 2:
            return None
        return runs[-1].start, max(ends)


def union_length(intervals: Iterable[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` clipped to [lo, hi]."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_b is not None and cur_a is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None and cur_a is not None:
        total += cur_b - cur_a
    return total


@asynccontextmanager
async def open_rig(label: str) -> AsyncIterator[Rig]:
    """A fresh scratch dir, fake Tart host and nomadsim; everything torn down on exit."""
    root = scratch_root() / f"{SCRATCH_PREFIX}{label}-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    root.chmod(0o755)  # guests (uid 501) read shared directories below it
    fake = FakeTart(root / "tart-home", root)
    try:
        async with open_nomadsim(stderr=root / "nomadsim.stderr") as sim:
            yield Rig(root, sim, fake)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_teardown, fake, root)


def _teardown(fake: FakeTart, root: Path) -> None:
    with contextlib.suppress(Exception):
        fake.cleanup()
    kill_by_env("TART_HOME", str(fake.home))
    with contextlib.suppress(Exception):
        fake.cleanup()
    shutil.rmtree(root, ignore_errors=True)
