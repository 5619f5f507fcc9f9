"""Become the tart user, with every group it belongs to, and run a command.

The plugin (root, with ``tart_user``) runs each ``tart`` command through this helper:
``nomad-driver-tart runas NAME UID GID -- COMMAND...`` (see ``_host.helpers``). It calls
``initgroups(3)``, then ``setgid`` and ``setuid``, then executes the command, so the
command's pid is the helper's.

Why a process of its own: macOS's ``setgroups(2)`` takes at most 16 groups (NGROUPS_MAX),
and admin users often belong to more; CPython's ``extra_groups`` then raises
``ValueError``. ``initgroups(3)`` on macOS sets the first 16 and tells the kernel to
resolve membership beyond them dynamically (through opendirectoryd), which no group list
handed to ``setgroups`` can do. It looks the groups up in the directory service, which a
forked child of a multi-threaded process (the plugin) must not do before exec; this
helper is a fresh single-threaded process. On Linux ``initgroups`` sets every group.

Standard library only, and run with ``-I`` (no ``PYTHON*`` variables, no user
site-packages): it runs as root until it has dropped to the user.
"""

from __future__ import annotations

import os
import sys

from tart_trio._host import helpers


def command(name: str, uid: int, gid: int, argv: list[str]) -> list[str]:
    """The argv that runs ``argv`` as the user ``name`` (``uid``, ``gid``) with its groups."""
    return helpers.command(helpers.RUNAS, name, str(uid), str(gid), "--", *argv)


def main(args: list[str]) -> int:
    """Drop to the user and exec; on failure say why on stderr and exit 126 or 127."""
    if len(args) < 5 or args[3] != "--":
        sys.stderr.write("usage: nomad-driver-tart runas NAME UID GID -- COMMAND [ARGS...]\n")
        return 2
    name, uid, gid, argv = args[0], int(args[1]), int(args[2]), args[4:]
    try:
        os.initgroups(name, gid)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        sys.stderr.write(f"cannot become user {name!r} (uid {uid}, gid {gid}): {exc}\n")
        return 126
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"cannot run {argv[0]!r} as user {name!r}: {exc}\n")
    return 127
