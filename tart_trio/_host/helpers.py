"""The helper processes, started as subcommands of the plugin's own executable.

The plugin starts two kinds of helper: the per-VM supervisor (``supervise``), which must
outlive the plugin, and the run-as helper (``runas``), which becomes the tart user before it
executes tart. Both are the plugin's executable started again with a fixed subcommand, as
Nomad's docker driver starts ``<executable> docker_logger``: whatever way the plugin was
installed (a virtualenv's console script, the zipapp's extracted payload, ``python -m
tart_trio``), its helpers import the same code from the same place. ``-I`` keeps ``PYTHON*``
variables and the user's site-packages out of processes that run as root.

Standard library only: ``_main`` imports this before it knows whether it serves Nomad.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Final

SUPERVISE: Final = "supervise"
RUNAS: Final = "runas"
#: How supervisors started by releases before the subcommands appear in a process's argv
#: (``python -m tart_trio._supervisor``); they may still run VMs after an upgrade.
LEGACY_SUPERVISOR_MODULE: Final = "tart_trio._supervisor"

_executable: tuple[str, ...] = (sys.executable, "-I", "-m", "tart_trio")


def executable() -> tuple[str, ...]:
    """The argv prefix that starts the plugin's executable again."""
    return _executable


def set_executable(argv: Sequence[str]) -> None:
    """Record how this process was started (``_main`` does, once, before serving)."""
    global _executable  # noqa: PLW0603 - one process-wide fact, set once at start
    _executable = tuple(argv)


def invocation(argv0: str, main_spec_name: str | None) -> tuple[str, ...]:
    """The argv prefix for an executable started as ``argv0`` (``python -m`` when a spec).

    ``main_spec_name`` is ``__main__.__spec__.name``: a module's or package's name when
    Python ran one (``python -m tart_trio``), ``"__main__"`` when it ran a directory or a
    zip file, None when it ran a file (a console script).
    """
    if main_spec_name not in (None, "__main__"):  # "__main__": a directory or zip was run
        package = main_spec_name.removesuffix(".__main__")
        return (sys.executable, "-I", "-m", package)
    return (sys.executable, "-I", os.path.abspath(argv0))


def command(subcommand: str, *args: str) -> list[str]:
    """The argv that runs one helper."""
    return [*_executable, subcommand, *args]
