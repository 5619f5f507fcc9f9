"""Fixtures that launch our plugin under the Nomad client stand-in."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.nomadsim import NomadSim, open_nomadsim
from tests.plugin_process import plugin_command

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLES = REPO / "examples"


def launch_args(log_file: Path, **env: str) -> dict[str, Any]:
    """``launch`` arguments for our plugin, as Nomad's loader would start it."""
    return {"cmd": plugin_command(), "env": env, "log_file": str(log_file)}


def plugin_log(log_file: Path) -> list[dict[str, Any]]:
    """The plugin's stderr as go-plugin re-logged it (one JSON object a line)."""
    if not log_file.exists():
        return []
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]


@pytest.fixture
async def sim() -> AsyncIterator[NomadSim]:
    """A Nomad client stand-in with nothing launched yet."""
    async with open_nomadsim() as nomad:
        yield nomad
