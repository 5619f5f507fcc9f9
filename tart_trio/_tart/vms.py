"""Questions about the host's VMs that need more than one ``tart`` call."""

from __future__ import annotations

import json
import logging

import trio

from tart_trio._tart.cli import Tart, TartCommandError

CALL_SECONDS = 30.0
#: The bound on one tart command that changes a VM (clone, set, stop, delete).
TART_CALL_SECONDS = 120.0
log = logging.getLogger("tart")


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


async def tart_stop(tart: Tart, vm_name: str, grace: float) -> None:
    """``tart stop`` (a power-off after ``grace`` seconds); a VM that is not running is fine."""
    with trio.move_on_after(TART_CALL_SECONDS):
        try:
            await tart.run("stop", vm_name, "--timeout", str(max(int(grace), 0)))
        except TartCommandError as exc:
            log.debug("tart stop", extra={"vm": vm_name, "error": str(exc)})


async def delete_vm(tart: Tart, vm_name: str) -> None:
    """``tart delete``, powering the VM off first if it runs; a missing VM is fine."""
    for _ in range(3):
        try:
            with trio.fail_after(TART_CALL_SECONDS):
                await tart.run("delete", vm_name)
            return
        except TartCommandError as exc:
            if exc.returncode == 2:  # does not exist
                return
            await tart_stop(tart, vm_name, 0)
        except trio.TooSlowError:
            return
