"""Free space on the volume that holds TART_HOME, and the reserve pulls and clones leave.

A full disk breaks every VM on the host, not just the start that filled it: a pull or a
clone that cannot leave the reserve free fails (retryable) before it writes anything,
and a download that would cross it while running is stopped.
"""

from __future__ import annotations

import os
import platform
from typing import Final

from tart_trio._errors import RecoverableError

GB: Final = 1_000_000_000
#: Without ``disk_reserve``: a tenth of the volume, at most this much.
DEFAULT_RESERVE_CAP: Final = 20 * GB


class NotEnoughSpace(RecoverableError):
    """A pull or clone would leave less than the reserve free."""


def _existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the volume that holds ``path``."""
    info = os.statvfs(_existing(path))
    return info.f_bavail * info.f_frsize


def volume_bytes(path: str) -> int:
    """The size of the volume that holds ``path``."""
    info = os.statvfs(_existing(path))
    return info.f_blocks * info.f_frsize


def reserve_bytes(path: str, disk_reserve_gb: int | None) -> int:
    """The configured reserve, else a tenth of the volume capped at 20 GB."""
    if disk_reserve_gb is not None:
        return disk_reserve_gb * GB
    return min(volume_bytes(path) // 10, DEFAULT_RESERVE_CAP)


def gb(value: int) -> str:
    """Bytes as GB (10^9) with one decimal, as Tart prints sizes."""
    return f"{value / GB:.1f} GB"


def require(path: str, reserve: int, needed: int, what: str) -> None:
    """Raise NotEnoughSpace unless ``needed`` bytes fit and ``reserve`` stays free."""
    free = free_bytes(path)
    if free - needed >= reserve:
        return
    need = f"needs {gb(needed)}, " if needed else ""
    raise NotEnoughSpace(
        f"{what} {need}but the volume of {path} has {gb(free)} free and {gb(reserve)} must stay "
        "free (disk_reserve): free space on the host, set image_cache_budget so unused "
        "images are pruned, or lower disk_reserve"
    )


def clone_cost(image_allocated: int) -> int:
    """What a clone writes: nothing on APFS (clonefile), else the image's data."""
    return 0 if platform.system() == "Darwin" else image_allocated
