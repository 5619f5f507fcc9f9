"""Images: is it cached, and pulling it with progress, timeouts and shared pulls."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Mapping
from typing import Final

import trio

from tart_trio._tart.cli import Tart, TartCommandError

_PERCENT: Final = re.compile(rb"(\d{1,3})%")


def is_remote(url: str) -> bool:
    """Tart treats ``host/namespace[:tag|@digest]`` as remote; plain names are local VMs."""
    return "/" in url


def canonical(url: str) -> str:
    """The name ``tart list`` shows for a pulled reference (tag defaults to latest)."""
    last = url.rsplit("/", 1)[-1]
    if "@" in last or ":" in last:
        return url
    return f"{url}:latest"


async def cached_names(tart: Tart) -> set[str]:
    """Names of images in the OCI cache and of local VMs."""
    listing = json.loads(await tart.run("list", "--format", "json") or "[]")
    return {str(entry.get("Name", "")) for entry in listing}


class PullStalled(TartCommandError):
    """``tart pull`` printed no progress for the inactivity timeout."""


async def pull(
    tart: Tart,
    url: str,
    *,
    credentials: Mapping[str, str],
    inactivity_seconds: float,
    on_progress: Callable[[int], None],
) -> None:
    """``tart pull URL``; report each new percentage; fail when it stalls."""
    env = {**tart.env, **credentials, "CI": "true"}
    process = await trio.lowlevel.open_process(
        tart.argv("pull", url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    tail = b""
    last = -1
    try:
        while True:
            with trio.move_on_after(inactivity_seconds) as idle:
                chunk = await process.stdout.receive_some(65536)
            if idle.cancelled_caught:
                raise PullStalled(
                    ["tart", "pull", url], -1, f"no progress for {inactivity_seconds:.0f}s"
                )
            if not chunk:
                break
            tail = (tail + chunk)[-4096:]
            for match in _PERCENT.finditer(chunk):
                percent = int(match.group(1))
                if percent != last and percent <= 100:
                    last = percent
                    on_progress(percent)
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        await process.stdout.aclose()
    if code != 0:
        raise TartCommandError(["tart", "pull", url], code, tail.decode(errors="replace"))
