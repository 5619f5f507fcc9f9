"""The fake OCI registry (a JSON file named by ``FAKETART_REGISTRY``) and pulls."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time

from . import knobs as _knobs
from . import storage
from .common import (
    Cancelled,
    DirFlock,
    SwiftErr,
    Verbatim,
    out,
    read_json,
    touch_access,
    write_json_atomic,
)
from .storage import RemoteName

GB = 1_000_000_000
DEFAULT_DISK_USED = 8 * 1024 * 1024


def load() -> dict:
    path = os.environ.get("FAKETART_REGISTRY")
    if not path:
        return {}
    data = read_json(path, {})
    return data if isinstance(data, dict) else {}


def _images(reg: dict) -> dict[str, dict]:
    res: dict[str, dict] = {}
    for ref, entry in (reg.get("images") or {}).items():
        rn = RemoteName.parse(ref)
        if rn is None or not isinstance(entry, dict):
            continue
        res[str(rn)] = entry
    return res


def digest_of(ref: str, entry: dict) -> str:
    if entry.get("digest"):
        d = str(entry["digest"])
        return d if d.startswith("sha256:") else f"sha256:{d}"
    import hashlib

    blob = json.dumps(
        {"ref": ref, "entry": {k: v for k, v in entry.items() if k != "knobs"}}, sort_keys=True
    )
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _host_unreachable(host: str) -> SwiftErr:
    return SwiftErr(
        'Error Domain=NSURLErrorDomain Code=-1003 "A server with the specified hostname could not '
        'be found." '
        f"UserInfo={{NSErrorFailingURLStringKey=https://{host}/v2/, "
        "NSLocalizedDescription=A server with the specified hostname could not be found.}"
    )


def _not_found() -> SwiftErr:
    return SwiftErr(
        'UnexpectedHTTPStatusCode(when: "pulling manifest", code: 404, details: '
        '"{\\"errors\\":[{\\"code\\":\\"MANIFEST_UNKNOWN\\",\\"message\\":\\"manifest '
        'unknown\\"}]}")'
    )


def resolve(rn: RemoteName, reg: dict | None = None) -> tuple[str, dict, str]:
    """Find *rn* in the registry: (normalised tag ref, entry, digest)."""
    reg = load() if reg is None else reg
    imgs = _images(reg)
    hosts = {RemoteName.parse(r).host for r in imgs} | set((reg.get("hosts") or {}).keys())
    if rn.host not in hosts:
        raise _host_unreachable(rn.host)
    if rn.digest:
        for ref, entry in imgs.items():
            if ref.startswith(rn.repo + ":") and digest_of(ref, entry) == rn.digest:
                return ref, entry, rn.digest
        raise _not_found()
    ref = str(rn)
    entry = imgs.get(ref)
    if entry is None:
        raise _not_found()
    return ref, entry, digest_of(ref, entry)


# ---------------------------------------------------------------------------
# Credentials (§2.2): environment, then ~/.docker/config.json, then "Keychain"


def keychain_path(home: str) -> str:
    return os.path.join(home, "faketart-keychain.json")


def find_credentials(home: str, host: str) -> tuple[str, str] | None:
    user = os.environ.get("TART_REGISTRY_USERNAME")
    pw = os.environ.get("TART_REGISTRY_PASSWORD")
    scope = os.environ.get("TART_REGISTRY_HOSTNAME")
    if user is not None and pw is not None and (not scope or scope == host):
        return user, pw
    docker = read_json(os.path.join(os.path.expanduser("~"), ".docker", "config.json"), {})
    if isinstance(docker, dict):
        auth = ((docker.get("auths") or {}).get(host) or {}).get("auth")
        if auth:
            try:
                u, _, p = base64.b64decode(auth).decode().partition(":")
                return u, p
            except (ValueError, UnicodeDecodeError):
                pass
    kc = read_json(keychain_path(home), {})
    if isinstance(kc, dict) and host in kc:
        try:
            u, _, p = base64.b64decode(kc[host]).decode().partition(":")
            return u, p
        except (ValueError, UnicodeDecodeError):
            pass
    return None


def required_credentials(reg: dict, host: str, entry: dict | None) -> dict | None:
    if entry is not None and isinstance(entry.get("credentials"), dict):
        return entry["credentials"]
    h = (reg.get("hosts") or {}).get(host) or {}
    c = h.get("credentials")
    return c if isinstance(c, dict) else None


def _unauthorized() -> SwiftErr:
    return SwiftErr(
        'UnexpectedHTTPStatusCode(when: "pulling manifest", code: 401, details: '
        '"{\\"errors\\":[{\\"code\\":\\"UNAUTHORIZED\\",\\"message\\":\\"authentication '
        'required\\"}]}")'
    )


def _auth_failed() -> SwiftErr:
    return SwiftErr(
        'AuthFailed(why: "received unexpected HTTP status code 401 while retrieving an '
        'authentication token", '
        "details: "
        '"{\\"errors\\":[{\\"code\\":\\"UNAUTHORIZED\\",\\"message\\":\\"unauthorized\\"}]}")'
    )


def check_auth(home: str, reg: dict, host: str, entry: dict | None) -> None:
    need = required_credentials(reg, host, entry)
    if not need:
        return
    have = find_credentials(home, host)
    if have is None:
        raise _unauthorized()
    if have != (str(need.get("username", "")), str(need.get("password", ""))):
        raise _auth_failed()


def validate_login(home: str, host: str, user: str, password: str) -> bool:
    reg = load()
    imgs = _images(reg)
    known = {RemoteName.parse(r).host for r in imgs} | set((reg.get("hosts") or {}).keys())
    if host not in known:
        raise _host_unreachable(host)
    need = required_credentials(reg, host, None)
    candidates = (
        [need]
        if need
        else [
            e["credentials"]
            for r, e in imgs.items()
            if RemoteName.parse(r).host == host and isinstance(e.get("credentials"), dict)
        ]
    )
    if not candidates:
        return True
    return any(
        (user, password) == (str(c.get("username", "")), str(c.get("password", "")))
        for c in candidates
    )


# ---------------------------------------------------------------------------
# Progress (Logging/ProgressObserver.swift, Tart 2.28.6 and later)


class Progress:
    """Tart's ProgressObserver: the first line at once, then on a change of the received
    bytes at most once a second (the clock restarts at every change, printed or not),
    and only when the whole percent differs from the last line; always when finished."""

    def __init__(self):
        self.ci = "CI" in os.environ
        self.last_line: str | None = None
        self.last_time = time.monotonic()

    def start(self) -> None:
        self.last_line = "0%"
        out("0%")

    def _print(self, line: str) -> None:
        if self.ci:
            out(line)
        else:
            out("\x1b[1A\r\x1b[J" + line)
        self.last_line = line

    def changed(self, fraction: float, finished: bool = False) -> None:
        now = time.monotonic()
        if not finished and now - self.last_time < 1.0:
            return
        self.last_time = now
        line = f"{int(100 * fraction)}%"
        if line != self.last_line:
            self._print(line)

    def force(self, pct: int) -> None:
        """Failure knobs: show the percent they act at."""
        line = f"{pct}%"
        if line != self.last_line:
            self._print(line)


def _hang_forever() -> None:
    while True:
        time.sleep(3600)


def default_size(entry: dict) -> int:
    if "download_size" in entry:
        return int(entry["download_size"])
    # a tenth of a real macOS base image (~25 GB): the driver checks claimed sizes against
    # the host's free disk, and test hosts are small
    return 2_500_000_000 if entry.get("os", "darwin") == "darwin" else 1 * GB


def disk_used(entry: dict) -> int:
    """Bytes of the image's disk that hold data: what a pull writes (``tart list`` Size)."""
    return max(0, int(entry.get("disk_used", DEFAULT_DISK_USED)))


def _speed(rn: RemoteName, fallback: float) -> float:
    """The registry is re-read during a pull, so a test can change the line speed."""
    entry = _images(load()).get(str(rn)) if rn.tag else None
    speed = (entry or {}).get("pull_speed", fallback if fallback != float("inf") else None)
    return float(speed) if speed else float("inf")


def _allocate(fd: int, start: int, end: int) -> None:
    """Give the staged disk data blocks in [start, end) (fallocate; written where unsupported)."""
    if end <= start:
        return
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError:
        os.pwrite(fd, b"\x5a" * (end - start), start)


def staging_dir(home: str, rn: RemoteName) -> str:
    """VMDirectory.temporaryDeterministic(key: name.description): tmp/<md5 of the name>."""
    key = hashlib.md5(str(rn).encode()).hexdigest()
    return os.path.join(storage.tmp_dir(home), key)


def _download(home: str, rn: RemoteName, ref: str, entry: dict, digest: str, k: dict) -> str:
    """Fetch the image into Tart's staging directory; return that directory."""
    stage = staging_dir(home, rn)
    os.makedirs(stage, exist_ok=True)
    # `open(name, epoch)`: the image the tag pointed at so far is marked least recently used
    old = storage.oci_entry(home, rn)
    if os.path.isdir(old):
        touch_access(old, 0)
    lock = os.open(stage, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        vm = storage.VMDir(stage)
        vm.write_config(storage.make_config(entry))
        size = max(1, default_size(entry))
        used = disk_used(entry)
        out(f"pulling disk ({size / GB:.1f} GB compressed)...")
        disk_gb = int(entry.get("disk", 50 if entry.get("os", "darwin") == "darwin" else 20))
        fd = os.open(vm.disk_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.ftruncate(fd, disk_gb * GB)
            prog = Progress()
            prog.start()
            fail_at = k.get("pull_fail_at")
            stall_at = k.get("pull_stall_at")
            speed = _speed(rn, float(entry.get("pull_speed") or 0) or float("inf"))
            received = 0.0
            written = 0
            last = time.monotonic()
            next_speed_check = last + 0.2
            while True:
                now = time.monotonic()
                if now >= next_speed_check:
                    speed = _speed(rn, speed)
                    next_speed_check = now + 0.2
                received = min(float(size), received + (now - last) * speed)
                last = now
                pct = int(received * 100 // size)
                if fail_at is not None and pct >= fail_at:
                    prog.force(int(fail_at))
                    msg = str(k.get("pull_fail_message") or _knobs.DEFAULTS["pull_fail_message"])
                    raise Verbatim(msg.replace("REGISTRY", rn.host), 1)
                if stall_at is not None and pct >= stall_at:
                    prog.force(int(stall_at))
                    _hang_forever()
                target = int(used * received / size) // 4096 * 4096
                if received >= size:
                    target = used
                _allocate(fd, written, target)
                written = max(written, target)
                if received >= size:
                    prog.changed(1.0, finished=True)
                    break
                prog.changed(received / size)
                remaining = (size - received) / speed
                time.sleep(min(0.1, max(0.005, remaining)))
        finally:
            os.close(fd)
        out("pulling NVRAM...")
        with open(vm.nvram_path, "wb") as f:
            f.write(b"FAKETART-NVRAM\0" + os.urandom(49))
        if entry.get("os", "darwin") == "darwin":
            disk_bytes = disk_gb * GB
            recovery = bool(entry.get("recovery_partition", False))
            storage.write_partitions(
                stage, storage.initial_partitions(disk_bytes, recovery=recovery)
            )
        meta = {
            "source": ref,
            "digest": digest,
            "user": entry.get("user", "admin"),
            "password": entry.get("password", "admin"),
            "guest_agent": bool(entry.get("guest_agent", True)),
            "knobs": entry.get("knobs") or {},
        }
        write_json_atomic(os.path.join(stage, storage.IMAGE_META), meta)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest},
            "layers": [
                {"mediaType": "application/vnd.cirruslabs.tart.disk.v2", "size": size},
                {"mediaType": "application/vnd.cirruslabs.tart.nvram.v1", "size": 64},
            ],
        }
        write_json_atomic(os.path.join(stage, "manifest.json"), manifest)
        return stage
    except Cancelled:
        # withTaskCancellationHandler's onCancel: the staged download is removed
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def pull(home: str, rn: RemoteName, *, first_line: bool) -> storage.VMDir:
    """Pull *rn* into the OCI cache, printing Tart's output (§3.2, VMStorageOCI.pull)."""
    if first_line:
        out(f"pulling {rn}...")
    reg = load()
    out("pulling manifest...")
    ref, entry, digest = resolve(rn, reg)
    check_auth(home, reg, rn.host, entry)
    k = _knobs.for_image(home, ref, entry.get("knobs"))
    rdir = storage.repo_dir(home, rn)
    dig_dir = os.path.join(rdir, digest)
    digest_name = f"{rn.repo}@{digest}"
    tag_link = os.path.join(rdir, rn.tag) if rn.tag else None

    def cached() -> bool:
        return storage.VMDir(dig_dir).initialized()

    def linked() -> bool:
        return tag_link is not None and os.path.islink(tag_link) and os.readlink(tag_link) == digest

    if cached() and linked():
        # the optimistic check before taking the lock
        out(f"{digest_name} image is already cached and linked!")
        return storage.VMDir(dig_dir)

    with DirFlock(storage.host_dir(home, rn.host), on_wait=lambda: out("waiting for lock...")):
        if cached():
            out(f"{digest_name} image is already cached! creating a symlink...")
        else:
            stage = _download(home, rn, ref, entry, digest, k)
            os.makedirs(rdir, exist_ok=True)
            if os.path.isdir(dig_dir):
                shutil.rmtree(dig_dir)
            os.rename(stage, dig_dir)
        if tag_link is not None:
            tmp = f"{tag_link}.tmp{os.getpid()}"
            os.symlink(digest, tmp)
            os.replace(tmp, tag_link)
        else:
            open(os.path.join(dig_dir, ".explicitly-pulled"), "wb").close()
        storage.oci_gc(home, rn)
        touch_access(dig_dir)  # "so it won't get pruned immediately"
    sys.stdout.flush()
    return storage.VMDir(dig_dir)
