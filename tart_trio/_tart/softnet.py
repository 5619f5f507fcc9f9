"""Whether softnet can run for the user that runs tart.

``tart run --net-softnet`` and ``--net-host`` start softnet (found on tart's PATH), which
needs root privileges to create its vmnet interface: softnet runs when its user is root,
when the executable is owned by root with the SUID bit set, or when passwordless ``sudo``
works for it (softnet ``src/main.rs``: it re-executes itself through ``sudo
--non-interactive``). Tart sets the SUID bit itself, through an interactive sudo, only
when ``tart run``'s stdout is a terminal (``Run.swift`` ``isInteractiveSession``,
``Softnet.swift`` ``configureSUIDBitIfNeeded``); under the driver it is a pipe. Otherwise
``tart run`` fails with "Softnet process terminated prematurely".
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from typing import Final, NamedTuple

import trio

from tart_trio._host import runas
from tart_trio._tart.cli import Tart

MODES: Final = ("softnet", "host")
SUDO_SECONDS: Final = 10.0
#: How long a sudo probe's answer is kept. Sudoers may change, but each refused probe
#: is logged by sudo (and mailed to root for users not in sudoers): ask rarely. The
#: SUID bit, the usual fix, needs no probe at all.
SUDO_CACHE_SECONDS: Final = 3600.0


class Softnet(NamedTuple):
    """What was found: softnet's path (None: not on tart's PATH) and why it cannot run."""

    path: str | None
    problem: str = ""

    @property
    def runs(self) -> bool:
        """Whether ``tart run`` can use softnet and host networking."""
        return self.path is not None and not self.problem


_sudo_answers: dict[tuple[int, str, int, int, int, int], tuple[float, bool]] = {}


async def _passwordless_sudo(tart: Tart, path: str, info: os.stat_result) -> bool:
    """``sudo --non-interactive SOFTNET --help`` as the tart user (kept for a while)."""
    uid = tart.user.uid if tart.user is not None else os.geteuid()
    key = (uid, path, info.st_ino, info.st_mtime_ns, info.st_mode, info.st_uid)
    known = _sudo_answers.get(key)
    if known is not None and time.monotonic() - known[0] < SUDO_CACHE_SECONDS:
        return known[1]
    sudo = shutil.which("sudo", path=tart.env.get("PATH")) or shutil.which("sudo", path="/usr/bin")
    works = False
    if sudo is not None:
        argv = [sudo, "--non-interactive", path, "--help"]
        if tart.user is not None:
            argv = runas.command(tart.user.name, tart.user.uid, tart.user.gid, argv)
        with trio.move_on_after(SUDO_SECONDS):
            result = await trio.run_process(
                argv,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                env=tart.env,
                check=False,
            )
            works = result.returncode == 0
    _sudo_answers[key] = (time.monotonic(), works)
    return works


def _examine(found: str) -> tuple[str, os.stat_result | str]:
    """The file behind softnet's path (Tart looks behind Homebrew's symlink) and its stat."""
    path = os.path.realpath(found)
    try:
        return path, os.stat(path)
    except OSError as exc:
        return path, exc.strerror or str(exc)


async def check(tart: Tart) -> Softnet:
    """Find softnet as tart would and tell whether it can get root privileges."""
    found = shutil.which("softnet", path=tart.env.get("PATH"))
    if found is None:
        return Softnet(
            None,
            "softnet was not found next to tart or in /opt/homebrew/bin: install it "
            "(brew install cirruslabs/cli/softnet).",
        )
    user = tart.user.name if tart.user is not None else "the plugin's user"
    if (tart.user.uid if tart.user is not None else os.geteuid()) == 0:
        return Softnet(found)
    path, info = _examine(found)
    if isinstance(info, str):
        return Softnet(found, f"softnet ({path}) cannot be examined: {info}.")
    if info.st_uid == 0 and info.st_mode & stat.S_ISUID:
        return Softnet(found)
    if await _passwordless_sudo(tart, path, info):
        return Softnet(found)
    return Softnet(
        found,
        f"softnet ({path}) cannot get root privileges as {user}: Tart sets its SUID bit only "
        "when tart run has a terminal, and passwordless sudo is not set up for it. Fix: "
        f"sudo chown root {path} && sudo chmod u+s {path}",
    )
