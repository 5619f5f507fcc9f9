"""macOS VM slots the host has lost: what counting running VMs cannot see.

Virtualization.framework sometimes keeps a macOS VM's slot after the VM is gone, until the
host reboots (openai/tart#1217, #445). Then ``tart run`` reports the VM limit while fewer
macOS VMs run than the limit allows. The driver remembers that: the node reports no free
macOS slot (so constraints on ``driver.tart.macos_vm_slots_free`` keep macOS jobs away),
and says why and what to do, until a macOS VM starts again. The memory is the plugin
process's: a host reboot restarts the plugin with a clean slate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from tart_trio._model import Fingerprint

#: Apple's limit on macOS VMs per host (Virtualization.framework's VZErrorDomain Code=6).
APPLE_LIMIT = 2
FREE: str = "driver.tart.macos_vm_slots_free"
LEAKED: str = "driver.tart.macos_vm_slots_leaked"


class Leak(msgspec.Struct, frozen=True):
    """The VM limit was hit while only ``running`` of ``limit`` macOS VMs ran."""

    running: int
    limit: int
    since: datetime

    def reason(self) -> str:
        """What the operator reads in the node's driver status."""
        return (
            f"macOS VM slots are lost: `tart run` hit the VM limit at "
            f"{self.since:%Y-%m-%d %H:%M:%S} UTC while {self.running} of {self.limit} macOS "
            "VMs ran. Virtualization.framework keeps the slots of some VMs after they are "
            "gone until the host reboots (openai/tart#1217); VMs of other users or another "
            "TART_HOME count too. Reboot the host; until a macOS VM starts here again, "
            "macos_vm_slots_free is 0."
        )


class MacOSSlots:
    """Whether the host has lost macOS VM slots; ``on_change`` asks for a new fingerprint."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.leak: Leak | None = None
        self._on_change = on_change

    def limit_hit(self, running: int, limit: int) -> Leak | None:
        """Tart refused a macOS VM as over the limit; the leak, if slots must have leaked.

        ``limit`` is the operator's ``max_macos_vms``; above Apple's own limit, that limit
        is what Tart enforces.
        """
        limit = min(limit, APPLE_LIMIT)
        if running >= limit:
            return None
        self.leak = Leak(running=running, limit=limit, since=datetime.now(UTC))
        self._on_change()
        return self.leak

    def started(self) -> None:
        """A macOS VM started: whatever was lost is back."""
        if self.leak is not None:
            self.leak = None
            self._on_change()

    def apply(self, fp: Fingerprint) -> Fingerprint:
        """The fingerprint as the slots really are (only where slots are reported at all:
        elsewhere ``FREE`` and ``LEAKED`` are "")."""
        if fp.attributes.get(FREE, "") == "":
            return fp
        if self.leak is None:
            return Fingerprint({**fp.attributes, LEAKED: False}, fp.health, fp.description)
        description = fp.description
        if fp.health == "healthy":  # after the fingerprint's own notices, if any
            notices = "" if description == "Healthy" else f"{description} "
            description = notices + self.leak.reason()
        attributes = {**fp.attributes, FREE: 0, LEAKED: True}
        return Fingerprint(attributes=attributes, health=fp.health, description=description)
