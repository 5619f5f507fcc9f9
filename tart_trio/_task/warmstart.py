"""A task's warm start: its slot pointed at its directories, a clone of the slot's golden
resumed with the golden's ``tart run`` arguments, checked by ``golden.resume``.

The whole attempt has a budget of its own (the pool's ``resume_timeout`` plus the clone), never
taken from ``boot_timeout``; the runner turns every failure into a cold boot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio

from tart_trio._config.task import command_shares
from tart_trio._host import ports
from tart_trio._model import NomadTask
from tart_trio._tart import vms
from tart_trio._tart.cli import Tart
from tart_trio._task import golden, warmlayout
from tart_trio._task.boot import Boot
from tart_trio._task.context import TaskContext


def task_targets(task: NomadTask) -> dict[str, str]:
    """Where the slot's links point for this task (the shares a cold start would have)."""
    targets = {"secrets": os.path.join(task.alloc_dir, task.name, "secrets")}
    targets.update(dict(command_shares(task.alloc_dir, task.name)))
    return targets


async def resume_clone(
    tart: Tart,
    task: NomadTask,
    vm_name: str,
    ctx: TaskContext,
    lease: warmlayout.Lease,
    boot: Boot,
    reserved: ports.Reservation,
    forwards: tuple[ports.Forward, ...],
    *,
    cloned: Callable[[], None],
    launched: Callable[[tuple[int, str | None]], None],
) -> tuple[golden.Resumed, float]:
    """Clone and resume; the resumed guest and the clone's seconds (WarmFailure if not)."""
    slot, record = lease.slot, lease.record
    probe, nonce = warmlayout.new_probe(slot)
    warmlayout.point(slot, {**task_targets(task), "probe": probe})
    began = time.monotonic()
    cloned()
    async with ctx.provision_lock:
        with trio.fail_after(vms.TART_CALL_SECONDS):
            await tart.run("clone", record.vm, vm_name)
    clone_seconds = time.monotonic() - began
    if not golden.state_file(tart, vm_name).exists():
        raise golden.WarmFailure("the clone of the golden carries no saved state")
    within = golden.budget(lease.pool)
    with trio.fail_after(within):
        async with ctx.launch_lock:
            await boot.check_macos_slots(tart)
            reserved.release()
            supervisor = await boot.launch_run(tart, golden.clone_run(record, vm_name), forwards)
        launched(supervisor)
        password = boot.config.ssh_password
        resumed = await golden.resume(
            tart,
            vm_name,
            boot.runtime_dir,
            supervisor,
            record,
            boot.config.ssh_user,
            password,
            nonce,
            within,
        )
    return resumed, clone_seconds
