"""The pre-pull: the operator's images are kept present on the node (``pre_pull { }``).

After the plugin starts, and again every ``period``, each image is pulled in the
background, at most ``concurrency`` at a time, so a moving tag (``:latest``) follows its
registry. A pull of a cached tag that has not moved only fetches the manifest. Tasks that
need an image being pre-pulled join that pull. Credentials come from ``pre_pull { auth }``
and reach only the environment of the one ``tart pull`` that needs them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from tart_trio._config.durations import parse_duration
from tart_trio._config.plugin import PluginConfig, PrePull
from tart_trio._errors import TartTrioError
from tart_trio._images.pulls import PullListener, Pulls
from tart_trio._tart import images
from tart_trio._tart.cli import Tart

log = logging.getLogger("prepull")
LOG_EVERY: Final = 10.0
RETRY_FIRST: Final = 60.0


@dataclass(frozen=True)
class PrePullContext:
    """What the pre-pull needs from the driver."""

    config: Callable[[], PluginConfig]
    tart: Callable[[], Tart]
    pulls: Pulls
    space_check: Callable[[Tart, str], Callable[[int], None]]
    changed: Callable[[], trio.Event]


def credentials_for(pre_pull: PrePull, url: str) -> dict[str, str]:
    """``TART_REGISTRY_*`` for the image's registry, when the operator configured it."""
    host = images.host_of(url)
    for auth in pre_pull.auth:
        if auth.registry == host:
            return {
                "TART_REGISTRY_USERNAME": auth.username,
                "TART_REGISTRY_PASSWORD": auth.password,
                "TART_REGISTRY_HOSTNAME": host,
            }
    return {}


async def keep_images(ctx: PrePullContext) -> None:
    """Pull the configured images now and every period (sooner after failures)."""
    retry = RETRY_FIRST
    while True:
        changed = ctx.changed()
        config = ctx.config()
        pre_pull = config.pre_pull
        wait = math.inf
        if pre_pull is not None and pre_pull.images:
            try:
                failed = await pull_round(ctx, config, pre_pull)
            except Exception as exc:  # a bug here must not take the plugin down
                log.error("pre-pull failed", exc_info=exc)
                failed = len(pre_pull.images)
            period = parse_duration(pre_pull.period)
            wait = min(period, retry) if failed else period
            retry = min(retry * 2, period) if failed else RETRY_FIRST
        with trio.move_on_after(wait):
            await changed.wait()


async def pull_round(ctx: PrePullContext, config: PluginConfig, pre_pull: PrePull) -> int:
    """Pull every image once, in the listed order, ``concurrency`` at a time; return how
    many failed."""
    slots = trio.Semaphore(pre_pull.concurrency)
    failures = 0

    async def one(url: str) -> None:
        nonlocal failures
        try:
            if not await _pull_one(ctx, config, pre_pull, url):
                failures += 1
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for url in dict.fromkeys(pre_pull.images):
            await slots.acquire()
            nursery.start_soon(one, url)
    return failures


async def _pull_one(ctx: PrePullContext, config: PluginConfig, pre_pull: PrePull, url: str) -> bool:
    began = trio.current_time()
    logged = began

    def progress(percent: int) -> None:
        nonlocal logged
        now = trio.current_time()
        if now - logged >= LOG_EVERY or percent == 100:
            logged = now
            log.info("pre-pull: downloading image", extra={"image": url, "percent": percent})

    def waiting() -> None:
        log.info(
            "pre-pull: waiting for another pull from the same registry",
            extra={"image": url},
        )

    try:
        tart = ctx.tart()
        log.info("pre-pull: checking image", extra={"image": url})
        await ctx.pulls.pull(
            tart,
            url,
            credentials_for(pre_pull, url),
            timeout_seconds=config.seconds("image_pull_timeout"),
            inactivity_seconds=config.seconds("image_pull_inactivity_timeout"),
            listener=PullListener(progress=progress, waiting=waiting),
            check_space=ctx.space_check(tart, url),
            background=True,
        )
    except (TartTrioError, OSError) as exc:
        log.warning(
            "pre-pull: the image could not be pulled", extra={"image": url, "error": str(exc)}
        )
        return False
    took = trio.current_time() - began
    log.info("pre-pull: image is present", extra={"image": url, "seconds": round(took, 1)})
    return True
