"""Tart's image cache as Nomad's scheduler sees it, and pruning it to a budget.

The fingerprint lists the cached images by tag and by digest, comma-separated as Nomad's
``set_contains``/``set_contains_any`` operators read them (empty lists as "", which is how
Nomad's client removes an attribute), and the free space of the volume that holds
TART_HOME (in Nomad's ``unique.`` namespace). Pruning uses Tart's own
``tart prune --space-budget``, which keeps the most recently used images that fit; images
the driver must keep are marked as used just before, and the budget handed to Tart always
covers them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import trio

from tart_trio._errors import TartTrioError
from tart_trio._host.diskspace import GB, free_bytes
from tart_trio._model import AttributeValue
from tart_trio._tart import images
from tart_trio._tart.cli import Tart

PREFIX: Final = "driver.tart"
IMAGES: Final = f"{PREFIX}.images"
DIGESTS: Final = f"{PREFIX}.image_digests"
# "unique.": it differs from Mac to Mac and changes all the time, so Nomad keeps it out of
# the node's computed class (constraints on it are checked node by node)
DISK_FREE: Final = f"unique.{PREFIX}.disk_free_gb"
#: The node attributes this module reports.
ATTRIBUTES: Final = (IMAGES, DIGESTS, DISK_FREE)
GIB: Final = 1024**3
CALL_SECONDS: Final = 60.0


@dataclass(frozen=True)
class CacheListing:
    """The OCI cache: ``host/ns:tag`` names and ``host/ns@sha256:…`` names, sorted."""

    tags: tuple[str, ...]
    digests: tuple[str, ...]


async def listing(tart: Tart) -> CacheListing:
    """``tart list --source oci``: every tag and every digest in the cache."""
    with trio.fail_after(CALL_SECONDS):
        out = await tart.run("list", "--source", "oci", "--format", "json")
    names = sorted({str(entry.get("Name", "")) for entry in json.loads(out or "[]")} - {""})
    return CacheListing(
        tags=tuple(n for n in names if "@" not in n),
        digests=tuple(n for n in names if "@" in n),
    )


def attributes(cache: CacheListing, free: int) -> dict[str, AttributeValue]:
    """Node attributes; an empty list is "", never left out (Nomad would keep the old one)."""
    return {
        IMAGES: ",".join(cache.tags),
        DIGESTS: ",".join(cache.digests),
        DISK_FREE: free // GB,
    }


async def fingerprint_attributes(tart: Tart) -> dict[str, AttributeValue]:
    """The cache and disk attributes of this node (only the disk when the list fails)."""
    free = free_bytes(tart.home_dir)
    try:
        cache = await listing(tart)
    except (TartTrioError, OSError, ValueError, trio.TooSlowError):
        cache = CacheListing(tags=(), digests=())
    return attributes(cache, free)


def _mark_used(tart: Tart, keep: Iterable[str], digests: Iterable[str]) -> int:
    """Give the kept images an access date after every other one's, as Tart's own open()
    does for an image it uses; return the bytes they hold."""
    kept = {
        os.path.realpath(path)
        for path in (images.cache_path(tart, url) for url in keep if images.is_remote(url))
        if os.path.isdir(path)
    }
    others = {os.path.realpath(images.cache_path(tart, name)) for name in digests} - kept
    newest_other = max((os.stat(path).st_atime for path in others), default=0.0)
    when = max(time.time(), newest_other + 1)
    for path in kept:
        os.utime(path, (when, os.stat(path).st_mtime))
    return sum(images.allocated_bytes(path) for path in kept)


async def prune_to_budget(tart: Tart, budget: int, keep: Iterable[str]) -> list[str]:
    """Prune Tart's caches to ``budget`` bytes, never removing the images in ``keep``.

    Returns the digest names that were removed. Nothing but Tart's cache entries can go:
    ``--entries caches`` never touches local VMs or a pull in progress.
    """
    before = await listing(tart)
    needed = _mark_used(tart, keep, before.digests)
    gib = max(budget // GIB, math.ceil(needed / GIB))
    with trio.fail_after(CALL_SECONDS):
        await tart.run("prune", "--entries", "caches", "--space-budget", str(gib))
    after = await listing(tart)
    return sorted(set(before.digests) - set(after.digests))
