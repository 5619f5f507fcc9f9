"""A suspended VM's saved state (`state.vzvmsave`) and what a restore compares.

Tart writes the file with Virtualization.framework's ``saveMachineStateTo`` when
`tart run --suspendable` gets SIGUSR1 (`Commands/Run.swift` L606-640, Tart 2.35.0) and hands
it to ``restoreMachineStateFrom`` on the VM's next `tart run` (L513-523). The framework
refuses a state whose configuration differs from the VM being built. The fake's file is::

    line 1   a JSON header padded with spaces to a multiple of 4 KiB:
             {"format": FORMAT, "fingerprint": {...}, "memory": {...}}
    ...      a sparse tail up to the ``state_size`` knob
    end      TRAILER (a file without it was cut short: it does not restore)

``fingerprint`` models the ``VZVirtualMachineConfiguration`` Tart builds (`VM.swift`
``craftConfiguration``), not the argv; ``memory`` is what the guest's memory holds (boot
time, wall clock, address, mounted shares).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time

from . import knobs as _knobs
from . import storage

FORMAT = "faketart-vzvmsave/1"
HEADER_BLOCK = 4096
TRAILER = b"\nFAKETART-VZVMSAVE-END\n"
MAX_DEFAULT_SIZE = 1536 * 1024 * 1024  # a setup-screen guest saves ~1.4-1.5 GB

#: What `tart run` prints (stderr, `fputs("\(error)")`, Run.swift L592) when
#: ``restoreMachineStateFrom`` refuses the file: the NSError itself, as openai/tart #796 shows.
RESTORE_FAILURE = (
    'Error Domain=VZErrorDomain Code=12 "The virtual machine failed to restore with error '
    '\u201cinvalid argument\u201d." UserInfo={NSLocalizedFailure=An error occurred while '
    "restoring the virtual machine., NSLocalizedFailureReason=The virtual machine failed to "
    "restore with error \u201cinvalid argument\u201d.}"
)
#: ``validateSaveRestoreSupport()``'s localizedDescription for a VM built without
#: --suspendable (Run.swift L614, L632-637). Modelled on openai/tart #803 ("Invalid virtual
#: machine configuration. Unsupported console device in configuration.", Tart 2.9.0); since
#: 2.27.1 console devices are kept in suspendable mode, so the device named is a guess.
SUSPEND_UNSUPPORTED = (
    "Invalid virtual machine configuration. Unsupported entropy device in configuration."
)
#: ``pause()`` of a VM that is already paused (a second `tart suspend` while saving). The
#: code path is Tart's (Run.swift L632-637: exit 1); the framework's text is a guess.
PAUSE_WHILE_PAUSED = "Invalid virtual machine state transition. The virtual machine is not running."

CHUNK = 4096


# ---------------------------------------------------------------------------
# The fingerprint


def fake_version() -> str:
    from .common import DEFAULT_VERSION

    return os.environ.get("FAKETART_VERSION") or DEFAULT_VERSION


def swift_order(tags: list[str], env: dict | None = None) -> list[str]:
    """The order of ``Dictionary(grouping:by:)`` over mount tags (Run.swift L758).

    Swift seeds its hashing per process, so with two or more tags the order of the
    virtio-fs devices changes from one `tart run` to the next, unless
    ``SWIFT_DETERMINISTIC_HASHING`` is set. ``FAKETART_SWIFT_HASH_SEED`` fixes the seed
    (the fake's own variable, for tests).
    """
    env = os.environ if env is None else env
    if len(tags) < 2:
        return list(tags)
    if env.get("SWIFT_DETERMINISTIC_HASHING"):
        seed = b""
    elif env.get("FAKETART_SWIFT_HASH_SEED"):
        seed = env["FAKETART_SWIFT_HASH_SEED"].encode()
    else:
        seed = os.urandom(16)
    return sorted(tags, key=lambda t: hashlib.sha256(seed + b"\0" + t.encode()).digest())


def display_px(cfg: dict, screen_scale: float | None) -> list[int]:
    """The display in pixels, as `Platform/Darwin.swift` ``graphicsDevice`` (L82-105) builds
    it: a size in points (the default unit) scales with the host's main screen; without a
    screen (no GUI session) the numbers are taken as pixels at 72 ppi."""
    d = cfg.get("display") or {}
    w, h = int(d.get("width", 1024)), int(d.get("height", 768))
    if (d.get("unit") or "pt") == "pt" and screen_scale:
        return [round(w * float(screen_scale)), round(h * float(screen_scale))]
    return [w, h]


def disk_identity(vm: storage.VMDir) -> dict:
    try:
        size = os.stat(vm.disk_path).st_size
    except OSError:
        size = None
    return {"size": size, "generation": storage.disk_generation(vm)}


def _root_disk(o: dict, cfg: dict) -> dict:
    opts = [x for x in (o.get("root_disk_opts") or "").split(",") if x]
    sync, caching = "full", "cached" if cfg.get("os") == "linux" else "automatic"
    for x in opts:
        if x.startswith("sync="):
            sync = x[5:]
        elif x.startswith("caching="):
            caching = x[8:]
    return {"ro": "ro" in opts, "sync": sync, "caching": caching}


def _extra_disks(o: dict) -> list[dict]:
    from .run import DiskSpec

    res = []
    for spec in o.get("disk") or []:
        d = DiskSpec(spec)
        path = os.path.abspath(os.path.expanduser(d.path))
        capacity = os.stat(path).st_size if os.path.isfile(path) else None
        res.append(
            {
                "capacity": capacity,
                "source": None if capacity is not None else d.path,
                "ro": d.ro,
                "options": sorted(x for x in d.options if x != "ro"),
            }
        )
    return res


def _network(o: dict) -> str:
    if o["_network"] in ("softnet", "host"):
        return "filehandle"  # VZFileHandleNetworkDeviceAttachment to softnet (Softnet.swift)
    if o["_network"] == "bridged":
        from .run import bridge_interfaces

        names = []
        for want in o["net_bridged"]:
            for bsd, disp in bridge_interfaces():
                if want in (bsd, disp):
                    names.append(bsd)
                    break
        return "bridged:" + ",".join(names)
    return "nat"


def virtio_fs(o: dict, env: dict | None = None) -> list[dict]:
    """One device per mount tag in Swift's order, with its shares (by name: a
    ``VZMultipleDirectoryShare`` is a dictionary)."""
    shares = o["_shares"]
    devices = []
    for tag in swift_order(list(shares), env):

        def entry(s) -> dict:
            resolved = s.path if s.url else os.path.realpath(s.path)
            return {"name": s.name, "ro": s.ro, "path": s.path, "resolved": resolved}

        devices.append(
            {"tag": tag, "shares": sorted((entry(s) for s in shares[tag]), key=_share_key)}
        )
    return devices


def _share_key(s: dict) -> str:
    return s.get("name") or ""


def fingerprint(home: str, vm: storage.VMDir, cfg: dict, o: dict, *, screen: bool) -> dict:
    """The modelled ``VZVirtualMachineConfiguration`` of this `tart run` (VM.swift
    ``craftConfiguration`` L315-461 and Run.swift L463-478)."""
    host = _knobs.host(home)
    try:
        with open(vm.nvram_path, "rb") as f:
            nvram = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        nvram = None
    return {
        "platform": {
            "os": cfg.get("os"),
            "ecid": cfg.get("ecid"),
            "hardwareModel": cfg.get("hardwareModel"),
        },
        "cpu": cfg.get("cpuCount"),
        "memory": cfg.get("memorySize"),
        "mac": cfg.get("macAddress"),
        "display": display_px(cfg, host.get("screen_scale") if screen else None),
        "disk": disk_identity(vm),
        "nvram": nvram,
        "network": _network(o),
        "root_disk": _root_disk(o, cfg),
        "disks": _extra_disks(o),
        "serial": bool(o.get("serial") or o.get("serial_path")),
        "clipboard": not o.get("no_clipboard"),
        "nested": bool(o.get("nested")),
        "console_port": f"tart-version-{fake_version()}",
        "os_build": str(host.get("os_build") or _knobs.DEFAULT_OS_BUILD),
        "uid": os.getuid(),
        "virtio_fs": virtio_fs(o),
    }


def differences(saved: dict, current: dict, k: dict) -> list[str]:
    """Fingerprint keys that differ, as the restore knobs judge them (empty: restores)."""
    ignore = set(k.get("restore_ignore") or [])
    mode = k.get("restore_share_paths") or "argv"
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        if key == "virtio_fs":
            if _shares_view(saved.get(key), mode) != _shares_view(current.get(key), mode):
                diffs.append(key)
        elif saved.get(key) != current.get(key):
            diffs.append(key)
    return diffs


def _shares_view(devices, mode: str) -> list:
    fields = {"argv": ("path",), "resolved": ("resolved",), "ignore": ()}.get(mode, ("path",))
    return [
        (
            d.get("tag"),
            [(s.get("name"), s.get("ro"), *(s.get(f) for f in fields)) for s in d["shares"]],
        )
        for d in devices or []
    ]


# ---------------------------------------------------------------------------
# The file


def encode_header(header: dict) -> bytes:
    data = json.dumps(header, sort_keys=True).encode()
    pad = -(len(data) + 1) % HEADER_BLOCK
    return data + b" " * pad + b"\n"


def read_header(path: str) -> tuple[dict | None, str | None]:
    """(header, None), or (None, why the file cannot be restored)."""
    try:
        with open(path, "rb") as f:
            head = b""
            while b"\n" not in head and len(head) < (1 << 20):
                block = f.read(HEADER_BLOCK)
                if not block:
                    break
                head += block
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - len(TRAILER)))
            tail = f.read()
    except OSError as e:
        return None, f"unreadable: {e.strerror}"
    line, nl, _ = head.partition(b"\n")
    try:
        header = json.loads(line) if nl else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return None, "not a saved state"
    if tail != TRAILER:
        return None, "truncated"
    return header, None


def rewrite_header(path: str, header: dict) -> None:
    """Replace the header in place (tests: "this state was saved an hour ago")."""
    old, problem = read_header(path)
    if old is None:
        raise ValueError(f"{path}: {problem}")
    with open(path, "rb") as f:
        old_len = len(f.read(1 << 20).partition(b"\n")[0]) + 1
    data = encode_header(header)
    if len(data) != old_len:
        raise ValueError("the new header does not fit the old one's place")
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def default_size(cfg: dict) -> int:
    return min(int(cfg.get("memorySize") or 0) or MAX_DEFAULT_SIZE, MAX_DEFAULT_SIZE)


class StateWriter:
    """``saveMachineStateTo`` in progress: the header first, then the file grows to its
    size over ``seconds`` (apparent size: a sparse tail with a block of data per step),
    and the trailer last."""

    def __init__(self, path: str, header: dict, size: int, seconds: float):
        self.head = encode_header(header)
        self.size = max(int(size), len(self.head) + len(TRAILER))
        self.seconds = max(0.0, float(seconds))
        self.started = time.monotonic()
        self.written = len(self.head)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.pwrite(self.fd, self.head, 0)

    def step(self, seconds: float | None = None) -> bool:
        """Write what is due (``seconds``: the knob as it is now, so a test may change
        it mid-save); True once the file is complete (and closed)."""
        if self.fd < 0:
            return True
        if seconds is not None:
            self.seconds = max(0.0, float(seconds))
        frac = 1.0
        if self.seconds > 0:
            frac = min(1.0, (time.monotonic() - self.started) / self.seconds)
        body = self.size - len(self.head) - len(TRAILER)
        target = len(self.head) + int(body * frac)
        if target > self.written:
            os.ftruncate(self.fd, target)
            at = max(len(self.head), target - CHUNK)
            os.pwrite(self.fd, os.urandom(target - at), at)
            self.written = target
        if frac < 1.0:
            return False
        os.ftruncate(self.fd, self.size)
        os.pwrite(self.fd, TRAILER, self.size - len(TRAILER))
        self.close()
        return True

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
