"""The files of a warm pool: each slot's share links, its golden's record, its holder.

A golden VM is saved with ``tart run`` arguments that must be byte-identical when its
clone is resumed, so its shares cannot name a task's directories. They name a slot's own
paths instead, ``<warm_dir>/<pool>/s<N>/<share>``, each a symlink that the driver re-points
(atomically, by rename) at the task's directories before the clone runs, and back at empty
placeholders when the task is gone. Every share is on one virtio-fs tag of its own
(``nomad-warm``, one device: with two tags Tart orders devices differently in each process),
never automounted, so the golden never had it mounted; the driver mounts it after the resume.
A ``probe`` share carries a nonce per resume, read back in the guest to prove the shares are
the task's. The directory is root's (0755): the tart user can read the links, not move them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import msgspec

from tart_trio._config.plugin import WarmPool
from tart_trio._config.task import TaskConfig
from tart_trio._model import NomadTask

TAG: Final = "nomad-warm"
#: The shares of a warm VM, as named in the guest; the read-only ones.
SHARES: Final = ("secrets", "local", "alloc-data", "alloc-tmp", "probe")
READONLY: Final = frozenset({"secrets", "probe"})
#: Where the driver mounts the tag in the guest, under the guest user's home.
GUEST_MOUNT: Final = ".nomad-tart/shares"
NONCE_FILE: Final = "nonce"


class GoldenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a golden was built from and how; any difference to now makes it stale."""

    vm: str
    pool_key: str
    image: str
    digest: str
    tart_path: str
    tart_version: str
    os_build: str
    tart_user: str
    tart_home: str
    login_session: bool
    run: tuple[str, ...]
    ip: str
    host_key: str
    built_at: float
    build_seconds: float = 0.0
    suspend_seconds: float = 0.0
    state_bytes: int = 0
    self_test_seconds: float = 0.0
    #: Restores of its clones that failed since it was built.
    failures: int = 0


@dataclass(frozen=True)
class Slot:
    """Slot ``index`` of pool ``pool`` under the warm directory ``root``."""

    root: Path
    pool: str
    index: int

    @property
    def base(self) -> Path:
        return self.root / self.pool

    @property
    def links(self) -> Path:
        """The directory whose entries the golden's ``--dir`` flags name."""
        return self.base / f"s{self.index}"

    @property
    def placeholder(self) -> Path:
        return self.base / "empty"

    @property
    def probes(self) -> Path:
        return self.base / f"s{self.index}.probe"

    @property
    def runtime(self) -> Path:
        """The runtime directory of the golden's (and the self-test's) supervisor."""
        return self.base / f"s{self.index}.run"

    @property
    def record_path(self) -> Path:
        return self.base / f"s{self.index}.json"

    @property
    def holder_path(self) -> Path:
        return self.base / f"s{self.index}.holder"

    @property
    def golden_prefix(self) -> str:
        """Every golden of this slot is named with it (never ``nomad-<uuid>``-shaped)."""
        return f"nomad-warm-{self.pool}-s{self.index}-"

    def golden_name(self) -> str:
        return f"{self.golden_prefix}g{int(time.time())}"

    def probe_vm(self) -> str:
        return f"nomad-warm-{self.pool}-s{self.index}-selftest"


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(path, 0o755)


def prepare(slot: Slot) -> None:
    """The slot's directories, and every link at its placeholder unless it points elsewhere."""
    for path in (slot.base, slot.links, slot.probes, slot.placeholder):
        _mkdir(path)
    for name in SHARES:
        _mkdir(slot.placeholder / name)
        link = slot.links / name
        if not link.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(link) if link.is_dir() else link.unlink()
            link.symlink_to(slot.placeholder / name)


def point(slot: Slot, targets: dict[str, str]) -> None:
    """Re-point the named links (atomically each); the others at their placeholders."""
    for name in SHARES:
        target = targets.get(name, str(slot.placeholder / name))
        fresh = slot.links / f".{name}.new"
        with contextlib.suppress(FileNotFoundError):
            fresh.unlink()
        fresh.symlink_to(target)
        os.replace(fresh, slot.links / name)


def reset(slot: Slot) -> None:
    """Every link back at its placeholder, the probes gone."""
    point(slot, {})
    for entry in slot.probes.iterdir() if slot.probes.is_dir() else ():
        shutil.rmtree(entry, ignore_errors=True)


def new_probe(slot: Slot) -> tuple[str, str]:
    """A fresh probe directory holding a nonce: (its path, the nonce)."""
    nonce = secrets.token_hex(16)
    directory = slot.probes / nonce
    _mkdir(directory)
    path = directory / NONCE_FILE
    path.write_text(nonce + "\n")
    os.chmod(path, 0o644)
    return str(directory), nonce


def run_dirs(slot: Slot) -> list[str]:
    """The golden's ``--dir`` flags: every share on the warm tag, at the slot's links."""
    return [
        f"--dir={name}:{slot.links / name}:{'ro,' if name in READONLY else ''}tag={TAG}"
        for name in SHARES
    ]


def read_record(slot: Slot) -> GoldenRecord | None:
    try:
        return msgspec.json.decode(slot.record_path.read_bytes(), type=GoldenRecord)
    except (OSError, msgspec.DecodeError):
        return None


def write_record(slot: Slot, record: GoldenRecord | None) -> None:
    """Replace the slot's record atomically (None: remove it)."""
    if record is None:
        with contextlib.suppress(FileNotFoundError):
            slot.record_path.unlink()
        return
    fresh = slot.record_path.with_suffix(".json.new")
    fresh.write_bytes(msgspec.json.encode(record))
    os.chmod(fresh, 0o600)
    os.replace(fresh, slot.record_path)


def read_holder(slot: Slot) -> str:
    """The VM name of the task that holds the slot ("" when none)."""
    try:
        return slot.holder_path.read_text().strip()
    except OSError:
        return ""


def write_holder(slot: Slot, vm_name: str) -> None:
    if vm_name:
        slot.holder_path.write_text(vm_name + "\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            slot.holder_path.unlink()


@dataclass(frozen=True)
class Lease:
    """A ready slot a task holds from its warm start to its end."""

    slot: Slot
    record: GoldenRecord
    pool: WarmPool

    @property
    def key(self) -> str:
        """``<pool>/<index>``, as the task's driver state keeps it."""
        return f"{self.slot.pool}/{self.slot.index}"


class Leases(Protocol):
    """What a task asks of the warm pools (``_task.warm.WarmPools``)."""

    def lease(self, task: NomadTask, config: TaskConfig, vm_name: str) -> Lease | str:
        """A ready slot for this task, or why it boots cold (a sentence for an event)."""

    def release(self, key: str, vm_name: str, *, golden_failed: str = "") -> None:
        """The task is done with the slot (``golden_failed``: its restore was refused)."""
