"""What this host can do for a job, checked before anything is cloned.

The operator's policy (``policy``) says what jobs may ask for; this module says what the
installed Tart and softnet can do. A job that asks for more is refused with the field, what it needs
and how to get it, instead of failing later at ``tart run``.
"""

from __future__ import annotations

from typing import Final

import trio

from tart_trio._config.task import TaskConfig, network_mode
from tart_trio._errors import ConfigError, TartTrioError
from tart_trio._tart import softnet, versions
from tart_trio._tart.cli import Tart

CALL_SECONDS: Final = 30.0


async def check_task(config: TaskConfig, tart: Tart) -> None:
    """Refuse a job this host's Tart cannot run (raises ConfigError or TartTrioError)."""
    with trio.fail_after(CALL_SECONDS):
        installed = versions.parse(await versions.installed(tart))
    too_old = versions.too_old(installed)
    if too_old:
        raise TartTrioError(too_old)
    versions.check_task(config, installed)
    mode = network_mode(config.network)
    if mode in softnet.MODES:
        with trio.fail_after(CALL_SECONDS):
            found = await softnet.check(tart)
        if not found.runs:
            raise ConfigError(
                "network.mode",
                f"{mode} networking needs softnet, which cannot run here: {found.problem}",
            )
