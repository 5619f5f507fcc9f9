"""Images: Tart's OCI cache, and pulling with progress, timeouts and disk checks.

What ``tart pull`` shows is not enough to tell a stalled pull from a slow one: it waits
silently for another pull from the same registry host (an ``flock`` on the host's cache
directory, ``waiting for lock...``), and since Tart 2.28.6 it prints a line only when the
whole percent changes, which on a big image and a slow line takes minutes. So activity is
measured by what arrives: output lines and the bytes that grow in Tart's staging
directory ``$TART_HOME/tmp/<md5 of the image name>`` (``VMDirectory.temporaryDeterministic``),
and the time spent waiting for the lock is never counted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from typing import Any, Final

import trio

from tart_trio._tart.cli import Tart, TartCommandError

GB: Final = 1_000_000_000
WATCH_SECONDS: Final = 0.5
_PERCENT: Final = re.compile(rb"(\d{1,3})%")
_DISK_LINE: Final = re.compile(rb"pulling disk \(([\d.]+) GB compressed\)")
_WAITING: Final = b"waiting for lock..."


def is_remote(url: str) -> bool:
    """Tart treats ``host/namespace[:tag|@digest]`` as remote; plain names are local VMs."""
    return "/" in url


def canonical(url: str) -> str:
    """The name ``tart list`` shows for a pulled reference (tag defaults to latest)."""
    last = url.rsplit("/", 1)[-1]
    if "@" in last or ":" in last:
        return url
    return f"{url}:latest"


def host_of(url: str) -> str:
    """The registry host (with its port) of a remote name."""
    return url.split("/", 1)[0]


def cache_path(tart: Tart, url: str) -> str:
    """Where Tart keeps a remote image: ``cache/OCIs/<host>/<namespace>/<tag or digest>``.

    A tag is a symlink to its digest directory; a ``:`` in the host is ``%3A``.
    """
    name = canonical(url)
    host, rest = name.split("/", 1)
    head, _, last = rest.rpartition("/")
    sep = "@" if "@" in last else ":"
    image, _, reference = last.partition(sep)
    namespace = f"{head}/{image}" if head else image
    return os.path.join(
        tart.home_dir, "cache", "OCIs", host.replace(":", "%3A"), *namespace.split("/"), reference
    )


def staging_dir(tart: Tart, url: str) -> str:
    """Where ``tart pull`` stages a download (the md5 of the name is Tart's own key)."""
    key = hashlib.md5(canonical(url).encode(), usedforsecurity=False).hexdigest()
    return os.path.join(tart.home_dir, "tmp", key)


def allocated_bytes(directory: str) -> int:
    """Bytes allocated to the files directly in ``directory`` (0 when it does not exist)."""
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:
                    continue
    except OSError:
        return 0
    return total


def image_config(tart: Tart, url: str) -> dict[str, Any] | None:
    """The ``config.json`` of a cached image or a local VM (None when there is none)."""
    base = cache_path(tart, url) if is_remote(url) else tart.vm_dir(url)
    try:
        with open(os.path.join(base, "config.json"), "rb") as config:
            data = json.loads(config.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def cached_names(tart: Tart) -> set[str]:
    """Names of images in the OCI cache and of local VMs."""
    listing = json.loads(await tart.run("list", "--format", "json") or "[]")
    return {str(entry.get("Name", "")) for entry in listing}


class PullStalled(TartCommandError):
    """``tart pull`` made no progress for the inactivity timeout, or ran out of time."""


def _nothing() -> None:
    return None


def _any_space(needed: int) -> None:
    del needed


class _Watch:
    """What a running ``tart pull`` has shown so far."""

    def __init__(self, now: float, timeout: float) -> None:
        self.active_at = now
        self.deadline = now + timeout
        self.waiting = False
        self.compressed: int | None = None
        self.staged = 0
        self.percent = -1


async def pull(
    tart: Tart,
    url: str,
    *,
    credentials: Mapping[str, str],
    inactivity_seconds: float,
    timeout_seconds: float,
    on_progress: Callable[[int], None],
    on_waiting: Callable[[], None] = _nothing,
    check_space: Callable[[int], None] = _any_space,
) -> None:
    """``tart pull URL`` with progress; fail when it stalls, runs too long or cannot fit.

    ``check_space(bytes)`` is asked before the pull starts (0), when Tart names the
    compressed size (before any disk byte is fetched) and, while the disk downloads, with
    what is left of it; it raises to abort. An aborted download leaves nothing behind.
    Tart's automatic pruning is off: it would remove images the driver keeps.
    """
    check_space(0)
    staging = staging_dir(tart, url)
    env = {**tart.env, **credentials, "CI": "true", "TART_NO_AUTO_PRUNE": "1"}
    argv = ["tart", "pull", url]
    process = await trio.lowlevel.open_process(
        tart.argv("pull", url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    watch = _Watch(trio.current_time(), timeout_seconds)
    pending = b""
    tail = b""
    aborted = True
    try:
        while True:
            chunk: bytes | bytearray | None = None
            with trio.move_on_after(WATCH_SECONDS):
                chunk = await process.stdout.receive_some(65536)
            now = trio.current_time()
            if chunk == b"":
                break
            if chunk:
                tail = (tail + chunk)[-4096:]
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    _read_line(line.strip(), watch, now, timeout_seconds, on_progress, on_waiting)
                    if watch.compressed is not None and line.startswith(b"pulling disk"):
                        check_space(watch.compressed)
            _check(watch, staging, now, argv, inactivity_seconds, timeout_seconds, check_space)
        code = await process.wait()
        aborted = False
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await process.stdout.aclose()
        if aborted:
            _remove_unlocked(staging)
    if code != 0:
        raise TartCommandError(argv, code, tail.decode(errors="replace"))


def _read_line(
    line: bytes,
    watch: _Watch,
    now: float,
    timeout: float,
    on_progress: Callable[[int], None],
    on_waiting: Callable[[], None],
) -> None:
    if watch.waiting:
        # the lock is ours now: the download's own clock starts
        watch.waiting = False
        watch.deadline = now + timeout
    watch.active_at = now
    if line == _WAITING:
        watch.waiting = True
        watch.deadline = now + timeout
        on_waiting()
        return
    disk = _DISK_LINE.search(line)
    if disk:
        watch.compressed = int(float(disk.group(1)) * GB)
        return
    percent = _PERCENT.fullmatch(line)
    if percent and int(percent.group(1)) <= 100 and int(percent.group(1)) != watch.percent:
        watch.percent = int(percent.group(1))
        on_progress(watch.percent)


def _check(
    watch: _Watch,
    staging: str,
    now: float,
    argv: list[str],
    inactivity: float,
    timeout: float,
    check_space: Callable[[int], None],
) -> None:
    if watch.waiting:
        watch.active_at = now  # waiting for another pull's lock is not inactivity
        if now > watch.deadline:
            raise PullStalled(
                argv, -1, f"waited {timeout:.0f}s for another pull from the same registry"
            )
        return
    staged = allocated_bytes(staging)
    if staged > watch.staged:
        watch.active_at = now
    watch.staged = staged
    if watch.compressed is not None:
        check_space(max(watch.compressed - staged, 0))
    if now - watch.active_at > inactivity:
        raise PullStalled(argv, -1, f"no progress for {inactivity:.0f}s")
    if now > watch.deadline:
        raise PullStalled(argv, -1, f"the pull did not finish within {timeout:.0f}s")


def _remove_unlocked(staging: str) -> None:
    """Remove a staged download nobody holds any more (as Tart's own tmp sweep would)."""
    try:
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another tart pull of this image stages here now
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(fd)
