"""tart_user: a root plugin runs every tart command as an unprivileged user."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from tart_trio._config.plugin import PluginConfig
from tart_trio._config.task import Directory, TaskConfig
from tart_trio._driver.fingerprint import HOME_MISSING, fingerprint
from tart_trio._driver.policy import share_with_tart_user
from tart_trio._errors import ConfigError
from tart_trio._host import helpers
from tart_trio._host.shares import readable_by
from tart_trio._host.users import RunAs, resolve_user, unreachable_user
from tart_trio._tart.cli import Tart
from tests.faketart.fixtures import MANY_GROUPS, ensure_groups, ensure_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")

USER = "nomad-tart-test"
GROUPS = MANY_GROUPS
REPORT = """#!/bin/sh
if ls "$(dirname "$0")/share" >/dev/null 2>&1; then share=true; else share=false; fi
printf '{"uid": %s, "home": "%s", "user": "%s", "path": "%s", "groups": "%s", "share": %s}\\n' \\
  "$(id -u)" "$HOME" "$USER" "$PATH" "$(id -G)" "$share"
"""


@pytest.fixture(scope="module")
def tart_user() -> pwd.struct_passwd:
    user = ensure_user(USER)
    ensure_groups(USER, GROUPS)
    return user  # type: ignore[no-any-return]


@pytest.fixture
def run_as(tart_user: pwd.struct_passwd) -> RunAs:
    """The plugin's view of the tart user (resolved as a root plugin resolves tart_user)."""
    user = resolve_user(USER)
    assert user is not None and user.uid == tart_user.pw_uid
    return user


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user may search (pytest's own tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="tart-user-test-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fake_tart_bin(public_dir: Path) -> Path:
    """A `tart` that reports who runs it, and whether it may list ``share`` beside it.

    Only the last of the user's 20 supplementary groups may read ``share``.
    """
    script = public_dir / "tart"
    script.write_text(REPORT)
    script.chmod(0o755)
    share = public_dir / "share"
    share.mkdir(mode=0o750)
    os.chown(share, 0, grp.getgrnam(GROUPS[-1]).gr_gid)
    return script


def _assert_all_groups(seen: dict[str, Any], user: pwd.struct_passwd) -> None:
    expected = {user.pw_gid, *(grp.getgrnam(g).gr_gid for g in GROUPS)}
    assert {int(g) for g in seen["groups"].split()} == expected
    assert seen["share"] is True, "the share only the 20th group may read is readable"


async def test_every_tart_command_runs_as_the_user(
    tart_user: pwd.struct_passwd, fake_tart_bin: Path
) -> None:
    tart = Tart(str(fake_tart_bin), user=resolve_user(USER))
    seen = json.loads(await tart.run("--version"))
    assert seen["uid"] == tart_user.pw_uid
    _assert_all_groups(seen, tart_user)
    assert seen["home"] == tart_user.pw_dir and seen["user"] == USER
    assert seen["path"].split(":")[:2] == [str(fake_tart_bin.parent), "/opt/homebrew/bin"]


async def test_tart_run_under_the_supervisor_runs_as_the_user(
    tart_user: pwd.struct_passwd, run_as: RunAs, fake_tart_bin: Path, tmp_path: Path
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    tart = Tart(str(fake_tart_bin), user=run_as)
    result = await trio.run_process(
        [
            *helpers.command(helpers.SUPERVISE),
            "--status-file",
            str(runtime / "s"),
            "--pid-file",
            str(runtime / "p"),
            "--log-file",
            str(runtime / "log"),
            "--",
            *tart.argv("run", "vm"),
        ],
        capture_stdout=True,
        env=tart.env,
    )
    with trio.fail_after(10):
        while not (runtime / "s").exists():
            await trio.sleep(0.05)
    seen = json.loads((runtime / "log").read_text())
    assert seen["uid"] == tart_user.pw_uid and seen["home"] == tart_user.pw_dir
    _assert_all_groups(seen, tart_user)
    assert json.loads((runtime / "s").read_text())["exit_code"] == 0
    assert int(result.stdout.split()[0]) > 0


async def test_fingerprint_is_unhealthy_when_the_users_home_is_missing(
    tart_user: pwd.struct_passwd, fake_tart_bin: Path
) -> None:
    home = Path(tart_user.pw_dir)
    home.rename(home.with_name(home.name + "-moved"))
    try:
        fp = await fingerprint(PluginConfig(tart_path=str(fake_tart_bin), tart_user=USER))
    finally:
        home.with_name(home.name + "-moved").rename(home)
    assert fp.health == "unhealthy" and fp.description == HOME_MISSING


async def test_fingerprint_is_unhealthy_for_an_unknown_user(fake_tart_bin: Path) -> None:
    fp = await fingerprint(PluginConfig(tart_path=str(fake_tart_bin), tart_user="no-such-user"))
    assert fp.health == "unhealthy" and "no-such-user" in fp.description


def test_a_directory_mount_the_user_cannot_read_is_refused_and_left_alone(
    tart_user: pwd.struct_passwd, run_as: RunAs, public_dir: Path
) -> None:
    secrets = public_dir / "secrets"
    secrets.mkdir(mode=0o777)
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    assert readable_by(str(public_dir), run_as)
    assert not readable_by(str(private), run_as)
    config = TaskConfig(
        url="ghcr.io/x/y",
        ssh_user="a",
        ssh_password="p",
        directory=(Directory(path=str(private), name="p"),),
    )
    with pytest.raises(ConfigError) as caught:
        share_with_tart_user(config, str(secrets), run_as)
    assert caught.value.field == "directory[0].path" and USER in str(caught.value)
    assert private.stat().st_uid == 0 and stat.S_IMODE(private.stat().st_mode) == 0o700
    share_with_tart_user(msgspec.structs.replace(config, directory=()), str(secrets), run_as)
    share_with_tart_user(config, str(secrets), None)  # no tart_user: nothing to check


def test_secrets_the_user_cannot_read_are_handed_to_it(
    tart_user: pwd.struct_passwd, run_as: RunAs, public_dir: Path
) -> None:
    secrets = public_dir / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "token").write_text("s3cret")
    (secrets / "token").chmod(0o600)  # a template with perms = "600"
    (secrets / "public.env").write_text("A=1")
    (secrets / "public.env").chmod(0o644)
    (secrets / "nested").mkdir(mode=0o700)
    (secrets / "nested" / "key").write_text("k")
    (secrets / "nested" / "key").chmod(0o400)
    config = TaskConfig(url="ghcr.io/x/y", ssh_user="a", ssh_password="p")
    share_with_tart_user(config, str(secrets), run_as)
    for path in (secrets, secrets / "token", secrets / "nested", secrets / "nested" / "key"):
        info = path.stat()
        assert info.st_uid == tart_user.pw_uid, path
        assert info.st_mode & 0o077 == 0, f"{path}: group/other access must not be widened"
    assert (secrets / "public.env").stat().st_uid == 0  # readable already: untouched
    seen = subprocess.run(
        ["cat", str(secrets / "token"), str(secrets / "nested" / "key")],
        user=tart_user.pw_uid,
        capture_output=True,
        check=True,
    )
    assert seen.stdout == b"s3cretk"


def test_secrets_behind_a_directory_the_user_cannot_search_are_refused(
    tart_user: pwd.struct_passwd, run_as: RunAs, public_dir: Path
) -> None:
    data_dir = public_dir / "data"
    secrets = data_dir / "alloc" / "secrets"
    secrets.mkdir(parents=True)
    data_dir.chmod(0o700)
    config = TaskConfig(url="ghcr.io/x/y", ssh_user="a", ssh_password="p")
    with pytest.raises(ConfigError) as caught:
        share_with_tart_user(config, str(secrets), run_as)
    assert str(data_dir) in str(caught.value) and USER in str(caught.value)
    assert secrets.stat().st_uid == 0  # nothing was changed


async def test_fingerprint_is_unhealthy_when_it_cannot_become_the_tart_user(
    tart_user: pwd.struct_passwd, fake_tart_bin: Path
) -> None:
    """A plugin that is not root can run tart only as itself."""
    os.seteuid(tart_user.pw_uid)  # the plugin as the test user (root can switch back)
    try:
        fp = await fingerprint(PluginConfig(tart_path=str(fake_tart_bin), tart_user="root"))
        itself = unreachable_user(USER)
    finally:
        os.seteuid(0)
    assert fp.health == "unhealthy"
    assert fp.description.startswith(f"tart_user is 'root', but the plugin runs as '{USER}'")
    assert itself is None  # tart_user names the plugin's own user: nothing to become


def test_links_planted_in_the_secrets_directory_are_never_handed_over(
    tart_user: pwd.struct_passwd, run_as: RunAs, public_dir: Path
) -> None:
    """Nomad's task directory is world-writable on macOS: another user may plant links."""
    elsewhere = public_dir / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    precious = elsewhere / "precious"
    precious.write_text("root's alone")
    precious.chmod(0o600)
    secrets = public_dir / "secrets"
    secrets.mkdir(mode=0o777)
    (secrets / "symlink").symlink_to(precious)
    os.link(precious, secrets / "hardlink")
    (secrets / "dir-symlink").symlink_to(elsewhere)
    config = TaskConfig(url="ghcr.io/x/y", ssh_user="a", ssh_password="p")
    share_with_tart_user(config, str(secrets), run_as)
    for path in (precious, elsewhere):
        assert path.stat().st_uid == 0, f"{path} was handed to the tart user"
    assert stat.S_IMODE(precious.stat().st_mode) == 0o600

    # The secrets directory itself swapped for a symlink: refused, nothing touched.
    secrets.rename(public_dir / "secrets-moved")
    (public_dir / "secrets").symlink_to(elsewhere)
    with pytest.raises(ConfigError) as caught:
        share_with_tart_user(config, str(public_dir / "secrets"), run_as)
    assert "symlink" in str(caught.value)
    assert elsewhere.stat().st_uid == 0 and precious.stat().st_uid == 0
