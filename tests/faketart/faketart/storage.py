"""VM bundles and the OCI cache under TART_HOME, in Tart's own layout (§2.1)."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil

from . import knobs as _knobs
from .common import (
    DirFlock,
    RuntimeErr,
    SwiftErr,
    allocated_bytes,
    apparent_bytes,
    lock_holder,
    read_json,
    swift_pretty_json,
    touch_access,
    vm_does_not_exist,
)

FAKE_DIR = ".faketart"  # fake-private state inside a bundle
IMAGE_META = ".faketart-image.json"  # fake-private metadata inside an OCI cache entry

# ---------------------------------------------------------------------------
# Remote names (§1.3)

_REMOTE_RE = re.compile(
    r"^(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?)"
    r"/(?P<ns>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})|@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


class RemoteName:
    def __init__(
        self, host: str, namespace: str, tag: str | None = None, digest: str | None = None
    ):
        self.host = host
        self.namespace = namespace
        self.digest = digest
        self.tag = None if digest else (tag or "latest")

    @classmethod
    def parse(cls, s: str) -> RemoteName | None:
        if not s.isascii():
            return None
        m = _REMOTE_RE.match(s)
        if not m:
            return None
        return cls(m["host"], m["ns"], m["tag"], m["digest"])

    @property
    def repo(self) -> str:
        return f"{self.host}/{self.namespace}"

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.repo}@{self.digest}" if self.digest else f"{self.repo}:{self.tag}"


def is_remote(name: str) -> bool:
    return RemoteName.parse(name) is not None


# ---------------------------------------------------------------------------
# Config


def random_mac() -> str:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02  # locally administered, unicast
    return ":".join(f"{x:02x}" for x in b)


def make_config(image: dict) -> dict:
    os_ = image.get("os", "darwin")
    darwin = os_ == "darwin"
    cpu = int(image.get("cpu", 4 if darwin else 2))
    cpu_min = int(image.get("cpuCountMin", 4 if darwin else 1))
    mem = int(image.get("memory", 8192 if darwin else 4096))
    mem_min = int(image.get("memoryMin", 4096 if darwin else 512))
    w, h, unit = parse_display(str(image.get("display", "1024x768")), (1024, 768, None))
    cfg = {
        "version": 1,
        "os": os_,
        "arch": "arm64",
        "cpuCountMin": cpu_min,
        "cpuCount": cpu,
        "memorySizeMin": mem_min * 1024 * 1024,
        "memorySize": mem * 1024 * 1024,
        "macAddress": str(image.get("mac") or random_mac()).lower(),
        "display": {"width": w, "height": h},
        "diskFormat": "raw",
    }
    if unit:
        cfg["display"]["unit"] = unit
    if darwin:
        cfg["ecid"] = base64.b64encode(os.urandom(8)).decode()
        cfg["hardwareModel"] = base64.b64encode(
            b"YnBsaXN0MDDTAQIDBAUGXxAZRGF0YVJlcHJlc2VudGF0aW9uVmVyc2lvbg=="
        ).decode()
    return cfg


def parse_display(spec: str, old: tuple[int, int, str | None]) -> tuple[int, int, str | None]:
    unit = old[2]
    m = re.search(r"(pt|px)$", spec)
    if m:
        unit = m.group(1)
        spec = spec[:-2]
    parts = spec.split("x", 1)

    def num(s: str) -> int:
        try:
            return int(s)
        except ValueError:
            return 0

    w = num(parts[0]) if parts else 0
    h = num(parts[1]) if len(parts) > 1 else 0
    return (w or old[0], h or old[1], unit)


def display_string(cfg: dict) -> str:
    d = cfg.get("display") or {}
    return f"{d.get('width', 1024)}x{d.get('height', 768)}{d.get('unit') or ''}"


# ---------------------------------------------------------------------------
# Bundles


class VMDir:
    def __init__(self, path: str):
        self.path = path
        self.name = os.path.basename(path)

    config_path = property(lambda self: os.path.join(self.path, "config.json"))
    disk_path = property(lambda self: os.path.join(self.path, "disk.img"))
    nvram_path = property(lambda self: os.path.join(self.path, "nvram.bin"))
    state_path = property(lambda self: os.path.join(self.path, "state.vzvmsave"))
    fake_path = property(lambda self: os.path.join(self.path, FAKE_DIR))

    def fake(self, *parts: str) -> str:
        return os.path.join(self.path, FAKE_DIR, *parts)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def initialized(self) -> bool:
        return all(os.path.isfile(p) for p in (self.config_path, self.disk_path, self.nvram_path))

    def read_config(self) -> dict:
        cfg = read_json(self.config_path)
        if not isinstance(cfg, dict):
            raise SwiftErr(
                'dataCorrupted(Swift.DecodingError.Context(codingPath: [], debugDescription: "The '
                f'given data was not valid JSON.", underlyingError: nil)) ({self.config_path})'
            )
        return cfg

    def write_config(self, cfg: dict) -> None:
        """Write in place (same inode), so a running VM keeps its lock."""
        data = (swift_pretty_json(cfg) + "\n").encode()
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    def running_pid(self) -> int | None:
        return lock_holder(self.config_path)

    def running(self) -> bool:
        return self.running_pid() is not None

    def state(self) -> str:
        if self.running():
            return "running"
        if os.path.exists(self.state_path):
            return "suspended"
        return "stopped"

    def image_meta(self) -> dict:
        meta = read_json(self.fake("image.json"), {})
        return meta if isinstance(meta, dict) else {}

    def knobs(self, home: str) -> dict:
        meta = self.image_meta()
        return _knobs.for_vm(home, self.name, meta.get("knobs"), meta.get("source"))

    def apparent(self) -> int:
        return sum(apparent_bytes(p) for p in (self.config_path, self.disk_path, self.nvram_path))

    def allocated(self) -> int:
        return sum(allocated_bytes(p) for p in (self.config_path, self.disk_path, self.nvram_path))

    def accessed(self) -> float:
        try:
            return os.stat(self.path).st_atime
        except OSError:
            return 0.0


def vms_dir(home: str) -> str:
    return os.path.join(home, "vms")


def local_vm(home: str, name: str) -> VMDir:
    return VMDir(os.path.join(vms_dir(home), name))


def open_local(home: str, name: str) -> VMDir:
    """VMStorageLocal.open: missing -> exit 2, incomplete -> VMMissingFiles."""
    vm = local_vm(home, name)
    if "/" in name or not vm.exists():
        raise vm_does_not_exist(name)
    if not vm.initialized():
        raise RuntimeErr("VM is missing some of its files (config.json, disk.img or nvram.bin)")
    touch_access(vm.path)
    return vm


def list_local(home: str) -> list[VMDir]:
    try:
        names = sorted(os.listdir(vms_dir(home)))
    except OSError:
        return []
    out = []
    for n in names:
        vm = local_vm(home, n)
        if vm.exists() and vm.initialized():
            out.append(vm)
    return out


def write_bundle(
    dst: str, cfg: dict, disk_gb: int, meta: dict | None, *, recovery_partition: bool = False
) -> VMDir:
    """Create a fresh bundle (used for OCI cache entries and fixtures)."""
    from .common import write_json_atomic

    os.makedirs(dst, exist_ok=True)
    vm = VMDir(dst)
    vm.write_config(cfg)
    disk_bytes = int(disk_gb) * 1_000_000_000
    with open(vm.disk_path, "wb") as f:
        f.truncate(disk_bytes)
    with open(vm.nvram_path, "wb") as f:
        f.write(b"FAKETART-NVRAM\0" + os.urandom(49))
    if meta is not None:
        write_json_atomic(os.path.join(dst, IMAGE_META), meta)
    if cfg.get("os") == "darwin":
        write_partitions(dst, initial_partitions(disk_bytes, recovery=recovery_partition))
    return vm


# ---------------------------------------------------------------------------
# The disk's identity: a saved state restores only onto the disk it was saved with
# (openai/tart #541). Its size is the file's; the generation counts what else changed
# the disk behind the state's back: cold boots, `tart set --disk`, `tart set --disk-size`.

DISK_IDENTITY = os.path.join(FAKE_DIR, "disk.json")


def disk_generation(vm: VMDir) -> int:
    data = read_json(os.path.join(vm.path, DISK_IDENTITY), {})
    return int(data.get("generation", 0)) if isinstance(data, dict) else 0


def bump_disk_generation(vm: VMDir) -> None:
    from .common import write_json_atomic

    os.makedirs(vm.fake_path, exist_ok=True)
    write_json_atomic(os.path.join(vm.path, DISK_IDENTITY), {"generation": disk_generation(vm) + 1})


# ---------------------------------------------------------------------------
# The guest's partition table (macOS guests): what `diskutil` in the guest sees.
# A macOS image's disk holds an ISC container, the system APFS container and, unless the
# image was built without it (cirruslabs/macos-image-templates: vanilla images keep it),
# a recovery container; `tart set --disk-size` grows the disk file only, leaving free
# space after the last partition (Tart VMDirectory.resizeRawDisk, docs/faq.md).

ISC_BYTES = 524_288_000
RECOVERY_BYTES = 5_368_709_120
PARTITIONS = os.path.join(FAKE_DIR, "partitions.json")


def initial_partitions(disk_bytes: int, *, recovery: bool) -> list[dict]:
    system = disk_bytes - ISC_BYTES - (RECOVERY_BYTES if recovery else 0)
    table = [
        {"id": "disk0s1", "content": "Apple_APFS_ISC", "size": ISC_BYTES},
        {"id": "disk0s2", "content": "Apple_APFS", "size": system},
    ]
    if recovery:
        table.append({"id": "disk0s3", "content": "Apple_APFS_Recovery", "size": RECOVERY_BYTES})
    return table


def read_partitions(vm_path: str) -> list[dict] | None:
    from .common import read_json

    return read_json(os.path.join(vm_path, PARTITIONS), None)


def write_partitions(vm_path: str, table: list[dict]) -> None:
    from .common import write_json_atomic

    os.makedirs(os.path.join(vm_path, FAKE_DIR), exist_ok=True)
    write_json_atomic(os.path.join(vm_path, PARTITIONS), table)


# ---------------------------------------------------------------------------
# OCI cache


def oci_root(home: str) -> str:
    return os.path.join(home, "cache", "OCIs")


def host_dir(home: str, host: str) -> str:
    return os.path.join(oci_root(home), host.replace(":", "%3A"))


def repo_dir(home: str, rn: RemoteName) -> str:
    return os.path.join(host_dir(home, rn.host), *rn.namespace.split("/"))


def oci_entry(home: str, rn: RemoteName) -> str:
    return os.path.join(repo_dir(home, rn), rn.reference)


def oci_cached(home: str, rn: RemoteName) -> VMDir | None:
    p = oci_entry(home, rn)
    vm = VMDir(p)
    return vm if os.path.isdir(p) and vm.initialized() else None


def list_oci(home: str) -> list[tuple[str, VMDir]]:
    root = oci_root(home)
    rows: list[tuple[str, VMDir]] = []
    if not os.path.isdir(root):
        return rows
    for host in sorted(os.listdir(root)):
        hpath = os.path.join(root, host)
        if not os.path.isdir(hpath) or os.path.islink(hpath):
            continue
        for dirpath, dirnames, filenames in os.walk(hpath):
            rel = os.path.relpath(dirpath, hpath)
            ns = "" if rel == "." else rel.replace(os.sep, "/")
            keep = []
            for d in dirnames + filenames:
                full = os.path.join(dirpath, d)
                if os.path.islink(full):
                    if ns and os.path.isdir(full):
                        rows.append((f"{host.replace('%3A', ':')}/{ns}:{d}", VMDir(full)))
                elif d.startswith("sha256:") and os.path.isdir(full):
                    if ns:
                        rows.append((f"{host.replace('%3A', ':')}/{ns}@{d}", VMDir(full)))
                elif d in dirnames:
                    keep.append(d)
            dirnames[:] = keep
    rows.sort(key=lambda r: r[0])
    return rows


def oci_gc(home: str, rn: RemoteName) -> None:
    """After linking or deleting *rn*: Tart's gc runs over the whole cache."""
    oci_gc_all(home)


def _gc_repo(rdir: str) -> None:
    try:
        entries = os.listdir(rdir)
    except OSError:
        return
    linked = set()
    for e in entries:
        p = os.path.join(rdir, e)
        if os.path.islink(p):
            linked.add(os.path.basename(os.readlink(p)))
    for e in entries:
        p = os.path.join(rdir, e)
        orphan = e.startswith("sha256:") and not os.path.islink(p) and e not in linked
        if orphan and not os.path.exists(os.path.join(p, ".explicitly-pulled")):
            shutil.rmtree(p, ignore_errors=True)


def oci_gc_all(home: str) -> None:
    """VMStorageOCI.gc: dangling tag links go, then digests no tag points to (unless explicitly
    pulled), in every repository of the cache."""
    root = oci_root(home)
    repos = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                repos.add(dirpath)
                if not os.path.exists(full):
                    os.unlink(full)
            elif name.startswith("sha256:"):
                repos.add(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith("sha256:")]
    for rdir in repos:
        _gc_repo(rdir)


def list_ipsws(home: str) -> list[str]:
    """IPSWCache.prunables: the ``*.ipsw`` files in ``cache/IPSWs``."""
    d = os.path.join(home, "cache", "IPSWs")
    try:
        return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".ipsw"))
    except OSError:
        return []


def delete_oci(home: str, rn: RemoteName) -> None:
    p = oci_entry(home, rn)
    if os.path.islink(p):
        os.unlink(p)
    elif os.path.isdir(p):
        shutil.rmtree(p)
    else:
        raise vm_does_not_exist(str(rn))
    oci_gc(home, rn)


# ---------------------------------------------------------------------------
# tmp/ staging + garbage collection (Config.gc)


def tmp_dir(home: str) -> str:
    p = os.path.join(home, "tmp")
    os.makedirs(p, exist_ok=True)
    return p


def _uuid() -> str:
    h = os.urandom(16).hex().upper()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


class Staging:
    """A locked scratch directory under ``$TART_HOME/tmp`` (gc skips locked ones)."""

    def __init__(self, home: str, suffix: str = ""):
        self.path = os.path.join(tmp_dir(home), _uuid() + suffix)
        os.makedirs(self.path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self, remove: bool = True) -> None:
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def gc_tmp(home: str) -> None:
    p = os.path.join(home, "tmp")
    try:
        entries = os.listdir(p)
    except OSError:
        return
    for e in entries:
        full = os.path.join(p, e)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.unlink(full)
        except OSError:
            pass
        finally:
            os.close(fd)


def global_lock(home: str) -> DirFlock:
    return DirFlock(home)
