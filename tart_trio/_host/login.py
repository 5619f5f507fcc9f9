"""The login session of the user that runs tart.

Virtualization.framework generates keys in the login keychain when a macOS 15.2+ guest
starts, which works only inside the GUI login session of the user running ``tart run``
(or with that user's login keychain unlocked): Tart's ``docs/faq.md`` "Headless
machines", openai/tart #1075. A process that a root daemon merely setuid to the user
runs in the daemon's session, not the user's (Apple's TN2083, "Daemons and Agents").

``launchctl print gui/UID`` succeeds only while UID is logged in at the GUI (the domain
exists only then), and ``launchctl asuser UID COMMAND`` runs COMMAND in that user's
bootstrap context, whose security audit session it adopts, without changing credentials
(``man launchctl``). With ``run_in_login_session``, the driver starts each VM's
supervisor that way (it stays root, and becomes the user only to exec ``tart run``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from typing import Final

import trio

LAUNCHCTL: Final = "/bin/launchctl"
CALL_SECONDS: Final = 10.0


def launchctl(env: Mapping[str, str]) -> str | None:
    """launchctl on tart's PATH, else macOS's own; None where there is none (not a Mac)."""
    return shutil.which("launchctl", path=env.get("PATH")) or shutil.which("launchctl", path="/bin")


async def logged_in(launchctl_path: str, uid: int) -> bool:
    """Whether ``uid`` has a GUI login session (``launchctl print gui/UID``)."""
    with trio.move_on_after(CALL_SECONDS):
        result = await trio.run_process(
            [launchctl_path, "print", f"gui/{uid}"],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        return result.returncode == 0
    return False


def in_session_of(launchctl_path: str, uid: int) -> list[str]:
    """The argv prefix that starts a command in ``uid``'s login session (root only)."""
    return [launchctl_path, "asuser", str(uid)]
