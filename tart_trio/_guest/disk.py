"""Giving a macOS guest the space ``disk_size`` added to its disk.

``tart set --disk-size`` only grows the disk file; macOS sees the space once its system
APFS container is grown into it. Over SSH, as Tart's FAQ ("Disk resizing") and Tart's own
tooling (tart-guest-agent's disk resizer, the Packer plugin's resize step) do it: find the
one disk with one ``Apple_APFS`` partition, repair the partition map, then
``diskutil apfs resizeContainer <partition> 0``. A container that another partition
follows (the recovery container Cirrus Labs' vanilla images keep) cannot grow in place;
then nothing is changed and the reason is reported.
"""

from __future__ import annotations

import plistlib
from typing import Any, Final

import msgspec

from tart_trio._guest.ssh import Guest, GuestError

#: Unused bytes below which the container already fills the disk (tart-guest-agent's rule).
ALREADY_GROWN: Final = 40960
_GB: Final = 1_000_000_000


class Grown(msgspec.Struct, frozen=True):
    """What became of the disk: the message for the task's event, and whether it grew."""

    message: str
    grew: bool


class _Layout(msgspec.Struct, frozen=True):
    disk: str
    size: int
    container: str
    container_size: int
    unused: int
    follower: str  # the partition right after the container ("" when it is the last one)


def _layout(listing: bytes) -> _Layout:
    try:
        doc: dict[str, Any] = plistlib.loads(listing)
    except (plistlib.InvalidFileException, ValueError) as exc:
        raise GuestError(f"`diskutil list -plist physical` printed no plist ({exc})") from None
    found = []
    for disk in doc.get("AllDisksAndPartitions", []):
        parts = disk.get("Partitions", [])
        used = sum(int(p.get("Size", 0)) for p in parts)
        for at, part in enumerate(parts):
            if part.get("Content") == "Apple_APFS":
                after = parts[at + 1] if at + 1 < len(parts) else None
                follower = "" if after is None else f"{after.get('DeviceIdentifier')} "
                if after is not None:
                    follower += f"({after.get('Content')})"
                found.append(
                    _Layout(
                        disk=str(disk["DeviceIdentifier"]),
                        size=int(disk.get("Size", 0)),
                        container=str(part["DeviceIdentifier"]),
                        container_size=int(part.get("Size", 0)),
                        unused=int(disk.get("Size", 0)) - used,
                        follower=follower,
                    )
                )
    if len(found) != 1:
        raise GuestError(
            f"found {len(found)} APFS containers on the guest's physical disks, "
            "expected exactly one (the system's)"
        )
    return found[0]


def _first_line(data: bytes) -> str:
    for line in data.decode(errors="replace").splitlines():
        if line.strip():
            return line.strip()
    return "no output"


async def grow_system_container(guest: Guest, password: str) -> Grown | None:
    """Grow the guest's system container into free disk space; None when there is none."""
    listed = await guest.run(["diskutil", "list", "-plist", "physical"])
    if listed.exit_code != 0:
        raise GuestError(f"`diskutil list` failed: {_first_line(listed.stderr)}")
    layout = _layout(listed.stdout)
    if layout.unused <= ALREADY_GROWN:
        return None
    free = f"{layout.unused / _GB:.1f} GB"
    if layout.follower:
        return Grown(
            message=(
                f"The VM's disk has {free} that macOS cannot use: partition "
                f"{layout.follower} follows the system container {layout.container}, so it "
                "cannot grow in place. Use an image without a recovery partition (e.g. the "
                "Cirrus Labs base or xcode images), or remove it in recovery mode as Tart's "
                "FAQ describes (Disk resizing)"
            ),
            grew=False,
        )
    sudo = ["sudo", "-S", "-p", ""]
    stdin = f"{password}\n".encode()
    repair = await guest.run(
        [*sudo, "/bin/sh", "-c", f"yes | diskutil repairDisk {layout.disk}"], stdin=stdin
    )
    if repair.exit_code != 0:
        raise GuestError(f"`diskutil repairDisk` failed: {_first_line(repair.stderr)}")
    resize = await guest.run(
        [*sudo, "diskutil", "apfs", "resizeContainer", layout.container, "0"], stdin=stdin
    )
    if resize.exit_code != 0:
        raise GuestError(
            f"`diskutil apfs resizeContainer {layout.container} 0` failed: "
            f"{_first_line(resize.stderr or resize.stdout)}"
        )
    after = _layout((await guest.run(["diskutil", "list", "-plist", "physical"])).stdout)
    return Grown(
        message=(
            f"Grew the guest's system container {layout.container} from "
            f"{layout.container_size / _GB:.1f} GB to {after.container_size / _GB:.1f} GB "
            f"(disk_size {layout.size / _GB:.0f} GB)"
        ),
        grew=True,
    )
