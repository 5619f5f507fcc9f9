"""Host accounts: the user ``tart_user`` names, with its groups and home.

The plugin may run as root and run tart as that user (``runas``); whether that user exists,
and whether this plugin can become it, are questions about the host's accounts.
"""

from __future__ import annotations

import os
import pwd

import msgspec

from tart_trio._errors import TartTrioError


class RunAs(msgspec.Struct, frozen=True):
    """The unprivileged user that runs tart when the plugin runs as root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


class UnknownUser(TartTrioError):
    """``tart_user`` names no user on this host."""


def resolve_user(name: str) -> RunAs | None:
    """The account ``tart_user`` names; None when unset or when we are not root."""
    if not name or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UnknownUser(f"tart_user {name!r} is not a user on this host") from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(
        name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, home=entry.pw_dir
    )


def unreachable_user(name: str) -> str | None:
    """The plugin's own user when ``tart_user`` names another and we are not root to become it."""
    if not name or os.geteuid() == 0:
        return None
    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        me = str(os.geteuid())
    return None if me == name else me
