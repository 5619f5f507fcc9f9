"""Questions about the host's VMs that need more than one ``tart`` call."""

from __future__ import annotations

import json

import trio

from tart_trio._tart.cli import Tart, TartCommandError

CALL_SECONDS = 30.0


async def vm_os(tart: Tart, name: str) -> str:
    """``darwin`` or ``linux``, from ``tart get``."""
    with trio.fail_after(CALL_SECONDS):
        info = json.loads(await tart.run("get", name, "--format", "json"))
    return str(info.get("OS", ""))


async def running_macos_vms(tart: Tart) -> list[str]:
    """Running macOS guests on this host, ours and others (Apple's limit counts them all)."""
    with trio.fail_after(CALL_SECONDS):
        listing = json.loads(
            await tart.run("list", "--format", "json", "--source", "local") or "[]"
        )
    running = [str(e["Name"]) for e in listing if e.get("State") == "running" or e.get("Running")]
    macos = []
    for name in running:
        try:
            if await vm_os(tart, name) == "darwin":
                macos.append(name)
        except TartCommandError:
            continue  # stopped or deleted meanwhile
    return macos
