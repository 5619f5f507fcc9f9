"""VM names: the name a task's VM gets, whose VM a name is, and the names tasks hold.

A task's VM is ``nomad-<alloc id>``; a second tart task of the same allocation gets
``nomad-<alloc id>-<task>``. ``OUR_NAME`` is the shape of both, the only VMs the driver
ever removes without a task. A running supervisor names the task it works for
(``--owner``), so a name is free only when no task of ours holds it and no supervisor of
another task runs it.
"""

from __future__ import annotations

import logging
import re
from typing import Final

import trio

from tart_trio._errors import TartTrioError
from tart_trio._model import NomadTask
from tart_trio._tart import processes, vms
from tart_trio._tart.cli import Tart
from tart_trio._task.runner import FORCE_SECONDS

log = logging.getLogger("driver")

OUR_NAME: Final = re.compile(
    r"^nomad-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(-[A-Za-z0-9_.-]+)?$"
)


def vm_names(alloc_id: str, task_name: str) -> tuple[str, str]:
    """The two names a task's VM can have: the allocation's, else one with the task's name."""
    base = f"nomad-{alloc_id}"
    return base, f"{base}-{task_name}"


def owner_of(task: NomadTask) -> str:
    """How a VM supervisor names the task it works for."""
    return f"{task.alloc_id}/{task.name}"


class VMNames:
    """The VM names this plugin's tasks hold (starting, running, being destroyed)."""

    def __init__(self) -> None:
        self._held: set[str] = set()

    def owned(self) -> set[str]:
        """The names held now (the reconciler leaves these alone)."""
        return set(self._held)

    def hold(self, name: str) -> None:
        """A recovered task holds its VM's name."""
        self._held.add(name)

    def release(self, name: str) -> None:
        """The task is gone (or never started): its name is free again."""
        self._held.discard(name)

    async def claim(self, task: NomadTask, tart: Tart) -> str:
        """``nomad-<alloc_id>``; a second tart task of the allocation adds its task name.

        A name no task of ours holds may still be running a sibling task's VM that Nomad
        has not recovered yet (its supervisor says whose it is): that name is not free.
        """
        for name in vm_names(task.alloc_id, task.name):
            if name in self._held:
                continue
            owners = {p.owner for p in await processes.find(name, tart.path)}
            if owners - {None, owner_of(task)} or name in self._held:
                continue
            self._held.add(name)
            return name
        raise TartTrioError(f"a VM for task {task.name!r} of {task.alloc_id} already runs")

    async def remove_unknown(self, task_id: str, tart: Tart) -> None:
        """DestroyTask(force) of a task this plugin does not know: remove its VM now.

        Nomad does this after a RecoverTask failed (the VM's supervisor is gone, say, after
        a host reboot). The task ID names the allocation and the task, so the VM is found
        without waiting for the orphan reconciler's grace period; a VM another task of
        ours holds, or whose running supervisor works for another task, is left alone.
        """
        parts = task_id.split("/")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            return
        task = NomadTask(id=task_id, alloc_id=parts[0], name=parts[1], alloc_dir="")
        for name in reversed(vm_names(task.alloc_id, task.name)):
            if not OUR_NAME.match(name) or name in self._held:
                continue
            if not await trio.Path(tart.vm_dir(name)).exists():
                continue
            left = await processes.find(name, tart.path)
            if {p.owner for p in left} - {None, owner_of(task)}:
                continue
            self._held.add(name)
            try:
                log.info(
                    "removing the VM of a task that could not be recovered",
                    extra={"vm": name, "task_id": task_id},
                )
                await processes.end(left, FORCE_SECONDS)
                await vms.delete_vm(tart, name)
            finally:
                self._held.discard(name)
            return
