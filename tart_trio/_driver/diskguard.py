"""What a guest writes into its shares cannot take their volume below ``disk_reserve``.

A command's guest writes into the task's ``local/`` and the allocation's ``alloc/data`` and
``alloc/tmp`` on the host, where nothing limits it; a full volume breaks every VM and task
on the host. Every ``CHECK_SECONDS`` the guard looks at the free space of each volume that
holds a running command's shares (one ``statvfs`` each, in a thread). When one is below
the reserve (the plugin's ``disk_reserve``, else a tenth of that volume, at most 20 GB), it
measures what each of those tasks' shares hold (a walk that follows no link and stops after
``WALK_LIMIT`` entries) and ends the task whose shares hold the most, with an event that
says why; the other tasks run on. The next round looks again.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from typing import Final

import trio

from tart_trio._config.task import command_shares
from tart_trio._host.diskspace import free_bytes, gb, reserve_bytes
from tart_trio._task.runner import TaskRunner

log = logging.getLogger("driver")

CHECK_SECONDS: Final = 2.0
#: Entries one walk of a task's shares looks at, at most (a guest can make millions).
WALK_LIMIT: Final = 200_000


def share_usage(runner: TaskRunner) -> int:
    """Bytes on disk under a command task's writable shares (no link followed)."""
    total, seen = 0, 0
    pending = [path for _, path in command_shares(runner.task.alloc_dir, runner.task.name)]
    while pending and seen < WALK_LIMIT:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries[: WALK_LIMIT - seen]:
            seen += 1
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)
    return total


def _over_reserve(
    runners: list[TaskRunner], reserve_gb: int | None
) -> list[tuple[TaskRunner, str]]:
    """Runners to end, each with the reason: the largest writer of each volume too full."""
    volumes: dict[int, list[TaskRunner]] = {}
    for runner in runners:
        try:
            volumes.setdefault(os.stat(runner.task.alloc_dir).st_dev, []).append(runner)
        except OSError:
            continue
    ending = []
    for group in volumes.values():
        path = group[0].task.alloc_dir
        free, reserve = free_bytes(path), reserve_bytes(path, reserve_gb)
        if free >= reserve:
            continue
        usage, culprit = max(((share_usage(r), r) for r in group), key=lambda pair: pair[0])
        ending.append(
            (
                culprit,
                f"its shares (local/, alloc/data, alloc/tmp) hold {gb(usage)} and left "
                f"{gb(free)} free on the volume of {path}, where {gb(reserve)} must stay free "
                "(disk_reserve); the task was stopped so that other tasks keep running",
            )
        )
    return ending


async def guard_shares(
    tasks: Callable[[], Iterable[TaskRunner]], reserve_gb: Callable[[], int | None]
) -> None:
    """End the command task that fills a volume below the reserve; runs until cancelled."""
    while True:
        await trio.sleep(CHECK_SECONDS)
        running = [r for r in tasks() if r.config.command and r.phase == "running"]
        if not running:
            continue
        ending = await trio.to_thread.run_sync(_over_reserve, running, reserve_gb())
        for runner, reason in ending:
            log.warning("ending a task that filled its volume", extra={"vm": runner.vm_name})
            await runner.end(reason)
