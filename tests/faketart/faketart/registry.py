"""The fake OCI registry (a JSON file named by ``FAKETART_REGISTRY``) and pulls."""

from __future__ import annotations

import base64
import json
import os
import sys
import time

from . import knobs as _knobs
from . import storage
from .common import DirFlock, SwiftErr, Verbatim, out, read_json, write_json_atomic
from .storage import RemoteName

GB = 1_000_000_000


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
# Progress (Logging/ProgressObserver.swift)


class Progress:
    def __init__(self):
        self.ci = "CI" in os.environ
        self.last_pct: int | None = None
        self.last_t = 0.0

    def render(self, pct: int, force: bool = False) -> None:
        now = time.monotonic()
        if pct == self.last_pct:
            return
        if not force and self.last_pct is not None and now - self.last_t < 1.0:
            return
        line = f"{pct}%"
        if self.ci or self.last_pct is None:
            out(line)
        else:
            out("\x1b[1A\r\x1b[J" + line)
        self.last_pct = pct
        self.last_t = now


def _hang_forever() -> None:
    while True:
        time.sleep(3600)


def default_size(entry: dict) -> int:
    if "download_size" in entry:
        return int(entry["download_size"])
    return 25 * GB if entry.get("os", "darwin") == "darwin" else 1 * GB


def pull(home: str, rn: RemoteName, *, first_line: bool) -> storage.VMDir:
    """Pull *rn* into the OCI cache, printing Tart's progress (§3.2)."""
    if first_line:
        out(f"pulling {rn}...")
    reg = load()
    out("pulling manifest...")
    ref, entry, digest = resolve(rn, reg)
    check_auth(home, reg, rn.host, entry)
    k = _knobs.for_image(home, ref, entry.get("knobs"))
    rdir = storage.repo_dir(home, rn)
    dig_dir = os.path.join(rdir, digest)
    tag_link = os.path.join(rdir, rn.tag) if rn.tag else None

    def cached() -> bool:
        return storage.VMDir(dig_dir).initialized()

    def link() -> None:
        if tag_link:
            tmp = f"{tag_link}.tmp{os.getpid()}"
            os.symlink(digest, tmp)
            os.replace(tmp, tag_link)

    if cached():
        if tag_link is None:
            out(f"{rn} image is already cached!")
        elif os.path.islink(tag_link) and os.readlink(tag_link) == digest:
            out(f"{rn} image is already cached and linked!")
        else:
            out(f"{rn.repo}@{digest} image is already cached! creating a symlink...")
            link()
            storage.oci_gc(home, rn)
        return storage.VMDir(dig_dir)

    with DirFlock(storage.host_dir(home, rn.host), on_wait=lambda: out("waiting for lock...")):
        if cached():  # someone else pulled it while we waited
            link()
            return storage.VMDir(dig_dir)
        size = max(1, default_size(entry))
        speed = entry.get("pull_speed")
        speed = float(speed) if speed else float("inf")
        out(f"pulling disk ({size / GB:.1f} GB compressed)...")
        prog = Progress()
        prog.render(0, force=True)
        fail_at = k.get("pull_fail_at")
        stall_at = k.get("pull_stall_at")
        t0 = time.monotonic()
        while True:
            done = min(size, (time.monotonic() - t0) * speed)
            pct = int(done * 100 // size)
            if fail_at is not None and pct >= fail_at:
                prog.render(int(fail_at), force=True)
                msg = str(k.get("pull_fail_message") or _knobs.DEFAULTS["pull_fail_message"])
                raise Verbatim(msg.replace("REGISTRY", rn.host), 1)
            if stall_at is not None and pct >= stall_at:
                prog.render(int(stall_at), force=True)
                _hang_forever()
            if done >= size:
                prog.render(100, force=True)
                break
            prog.render(pct)
            remaining = (size - done) / speed
            time.sleep(min(0.1, max(0.005, remaining)))
        out("pulling NVRAM...")
        meta = {
            "source": ref,
            "digest": digest,
            "user": entry.get("user", "admin"),
            "password": entry.get("password", "admin"),
            "guest_agent": bool(entry.get("guest_agent", True)),
            "knobs": entry.get("knobs") or {},
        }
        stage = storage.Staging(home)
        try:
            storage.write_bundle(
                stage.path,
                storage.make_config(entry),
                int(entry.get("disk", 50 if entry.get("os", "darwin") == "darwin" else 20)),
                meta,
                recovery_partition=bool(entry.get("recovery_partition", False)),
            )
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digest,
                },
                "layers": [
                    {"mediaType": "application/vnd.cirruslabs.tart.disk.v2", "size": size},
                    {"mediaType": "application/vnd.cirruslabs.tart.nvram.v1", "size": 64},
                ],
            }
            write_json_atomic(os.path.join(stage.path, "manifest.json"), manifest)
            if rn.digest:
                open(os.path.join(stage.path, ".explicitly-pulled"), "wb").close()
            os.makedirs(rdir, exist_ok=True)
            if os.path.isdir(dig_dir):
                import shutil

                shutil.rmtree(dig_dir)
            os.rename(stage.path, dig_dir)
        finally:
            stage.close(remove=True)
        link()
        storage.oci_gc(home, rn)
    sys.stdout.flush()
    return storage.VMDir(dig_dir)
