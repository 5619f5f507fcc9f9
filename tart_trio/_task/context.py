"""What a task needs from the driver: tart, shared pulls, the plugin's timeouts and locks."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from tart_trio._images.pulls import Pulls
from tart_trio._tart.cli import Tart
from tart_trio._task.slots import MacOSSlots
from tart_trio._task.warmlayout import Leases


@dataclass(frozen=True)
class TaskContext:
    """What a task needs from the driver: tart, shared pulls and the plugin's timeouts."""

    tart: Tart
    pulls: Pulls
    boot_timeout: float
    pull_timeout: float
    pull_inactivity: float
    max_macos_vms: int
    launch_lock: trio.Lock
    provision_lock: trio.Lock
    slots: MacOSSlots
    #: Before the supervisor's command: starts it in tart_user's login session
    #: (``run_in_login_session``), so that ``tart run`` runs there.
    launch_prefix: tuple[str, ...] = ()
    disk_reserve: int = 0
    #: The warm pools (the real plugin instance only).
    warm: Leases | None = None
