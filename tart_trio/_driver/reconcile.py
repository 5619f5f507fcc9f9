"""The orphan reconciler: VMs named like ours that no task owns are stopped and deleted.

Only names of the form ``nomad-<alloc uuid>[-<task>]`` are considered; anything else on
the host is never touched. A VM is judged only when both it and this plugin process are
older than the creation grace, so tasks that Nomad is about to recover are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Final

import trio

from tart_trio._config.durations import parse_duration
from tart_trio._config.plugin import GCConfig
from tart_trio._driver.names import OUR_NAME
from tart_trio._tart.cli import Tart, TartCommandError

log = logging.getLogger("reconciler")
CALL_SECONDS: Final = 120.0


def _age_seconds(tart: Tart, name: str) -> float:
    try:
        created = os.stat(tart.vm_dir(name)).st_mtime
    except OSError:
        return 0.0
    return time.time() - created


async def reconcile_once(tart: Tart, owned: set[str], config: GCConfig) -> list[str]:
    """One pass; returns the orphans found (removed unless dry run)."""
    grace = parse_duration(config.creation_grace)
    with trio.fail_after(CALL_SECONDS):
        listing = json.loads(
            await tart.run("list", "--format", "json", "--source", "local") or "[]"
        )
    orphans = []
    for entry in listing:
        name = str(entry.get("Name", ""))
        if not OUR_NAME.match(name) or name in owned or _age_seconds(tart, name) < grace:
            continue
        orphans.append(name)
        if config.dry_run:
            log.info("orphaned VM found (dry run, left in place)", extra={"vm": name})
            continue
        log.warning("removing orphaned VM: no Nomad task owns it", extra={"vm": name})
        try:
            with trio.fail_after(CALL_SECONDS):
                if entry.get("State") == "running" or entry.get("Running"):
                    await tart.run("stop", name, "--timeout", "10")
                await tart.run("delete", name)
        except (TartCommandError, trio.TooSlowError) as exc:
            log.warning("could not remove orphaned VM", extra={"vm": name, "error": str(exc)})
    return orphans


async def run_reconciler(
    tart_factory: Callable[[], Tart],
    owned: Callable[[], set[str]],
    config: Callable[[], GCConfig],
) -> None:
    """Reconcile every ``gc.period`` once the plugin has been up for ``creation_grace``."""
    await trio.sleep(parse_duration(config().creation_grace))
    while True:
        settings = config()
        if settings.enabled:
            try:
                await reconcile_once(tart_factory(), owned(), settings)
            except Exception as exc:
                log.warning("orphan reconciliation failed", extra={"error": str(exc)})
        await trio.sleep(parse_duration(settings.period))
