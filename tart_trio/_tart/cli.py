"""Running ``tart``: where it is, the environment it gets, and how failures read."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import trio

from tart_trio._errors import TartTrioError
from tart_trio._host import runas
from tart_trio._host.users import RunAs

HOMEBREW_TART: Final = "/opt/homebrew/bin/tart"
HOMEBREW_BIN: Final = "/opt/homebrew/bin"
_STDERR_TAIL: Final = 2000


class TartCommandError(TartTrioError):
    """``tart`` exited non-zero. Carries the argv (never secrets), exit code and stderr tail."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()[-_STDERR_TAIL:]
        detail = self.stderr.splitlines()[-1] if self.stderr else "no error output"
        super().__init__(f"`{' '.join(self.argv)}` failed with exit code {returncode}: {detail}")


class TartNotFound(TartTrioError):
    """No usable ``tart`` executable."""


def locate_tart(configured: str, search_path: str | None = None) -> str | None:
    """The tart binary: the configured one, else ``tart`` on PATH, else Homebrew's."""
    if configured:
        candidate = Path(configured)
        if "/" not in configured:
            found = shutil.which(configured, path=search_path)
            return found
        return str(candidate) if os.access(candidate, os.X_OK) and candidate.is_file() else None
    found = shutil.which("tart", path=search_path)
    if found:
        return found
    return HOMEBREW_TART if os.access(HOMEBREW_TART, os.X_OK) else None


def tart_environment(
    tart_path: str,
    tart_home: str,
    base: Mapping[str, str] | None = None,
    user: RunAs | None = None,
) -> dict[str, str]:
    """The environment of every tart command: the plugin's own, never a task's.

    The tart binary's directory and Homebrew's bin lead PATH so Tart finds ``softnet``
    even when Nomad runs as a launchd daemon with a minimal PATH. Run as ``user``, tart
    gets that user's HOME, USER and LOGNAME (its VMs live in that HOME's ``.tart``).
    """
    env = dict(os.environ if base is None else base)
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
    for key in [k for k in env if k.startswith("TART_REGISTRY_")]:
        del env[key]  # credentials are scoped to the one call that needs them
    extra = [str(Path(tart_path).parent), HOMEBREW_BIN]
    parts = [p for p in env.get("PATH", "/usr/bin:/bin").split(":") if p]
    env["PATH"] = ":".join(dict.fromkeys([*extra, *parts]))
    if tart_home:
        env["TART_HOME"] = tart_home
    return env


class Tart:
    """A configured ``tart`` executable. Callers own timeouts (wrap calls in fail_after)."""

    def __init__(
        self,
        path: str,
        home: str = "",
        base_env: Mapping[str, str] | None = None,
        user: RunAs | None = None,
    ) -> None:
        self.path = path
        self.home = home
        self.user = user
        self.env = tart_environment(path, home, base_env, user)

    def argv(self, *args: str) -> list[str]:
        """The command line that runs ``tart ARGS`` as the tart user, with all its groups.

        Without ``tart_user`` that is tart itself; with it, the :mod:`tart_trio._host.runas`
        helper, which becomes the user and then is tart (same pid).
        """
        command = [self.path, *args]
        if self.user is None:
            return command
        return runas.command(self.user.name, self.user.uid, self.user.gid, command)

    @property
    def home_dir(self) -> str:
        """Where tart keeps its VMs: TART_HOME as tart will see it, else ~/.tart."""
        home = self.env.get("TART_HOME")
        if home:
            return home
        return os.path.join(self.env.get("HOME") or os.path.expanduser("~"), ".tart")

    def vm_dir(self, name: str) -> str:
        """A VM's bundle directory."""
        return os.path.join(self.home_dir, "vms", name)

    async def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> str:
        """Run ``tart ARGS``; return stdout, raise TartCommandError on a non-zero exit."""
        env = self.env if not extra_env else {**self.env, **extra_env}
        result = await trio.run_process(
            self.argv(*args),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            start_new_session=True,
        )
        stdout = result.stdout.decode(errors="replace")
        if result.returncode != 0:
            raise TartCommandError(
                ["tart", *args], result.returncode, result.stderr.decode(errors="replace")
            )
        return stdout

    async def version(self) -> str:
        """``tart --version``, e.g. ``2.35.0``."""
        return (await self.run("--version")).strip()
