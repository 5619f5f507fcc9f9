"""tart_user: a root plugin runs every tart command as an unprivileged user."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio

from tart_trio._config import Directory, PluginConfig, TaskConfig
from tart_trio._errors import ConfigError
from tart_trio._fingerprint import HOME_MISSING, fingerprint
from tart_trio._policy import check_shares_readable, readable_by
from tart_trio._tart.cli import Tart, resolve_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")

USER = "nomad-tart-test"
REPORT = """#!/bin/sh
printf '{"uid": %s, "home": "%s", "user": "%s", "path": "%s"}\\n' "$(id -u)" "$HOME" "$USER" "$PATH"
"""


@pytest.fixture(scope="module")
def tart_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pwd.struct_passwd]:
    home = Path("/tmp") / f"{USER}-home"
    home.mkdir(mode=0o755, exist_ok=True)
    created = subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", USER],
        capture_output=True,
        check=False,
    )
    assert created.returncode in (0, 9), created.stderr  # 9: exists already
    entry = pwd.getpwnam(USER)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    yield entry


@pytest.fixture
def fake_tart_bin(tmp_path: Path) -> Path:
    public = Path("/tmp") / f"{USER}-bin-{os.getpid()}"
    public.mkdir(mode=0o755, exist_ok=True)
    script = public / "tart"
    script.write_text(REPORT)
    script.chmod(0o755)
    return script


async def test_every_tart_command_runs_as_the_user(
    tart_user: pwd.struct_passwd, fake_tart_bin: Path
) -> None:
    tart = Tart(str(fake_tart_bin), user=resolve_user(USER))
    seen = json.loads(await tart.run("--version"))
    assert seen["uid"] == tart_user.pw_uid
    assert seen["home"] == tart_user.pw_dir and seen["user"] == USER
    assert seen["path"].split(":")[:2] == [str(fake_tart_bin.parent), "/opt/homebrew/bin"]


async def test_tart_run_under_the_supervisor_runs_as_the_user(
    tart_user: pwd.struct_passwd, fake_tart_bin: Path, tmp_path: Path
) -> None:
    user = resolve_user(USER)
    assert user is not None
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    groups = ",".join(str(g) for g in user.groups)
    tart = Tart(str(fake_tart_bin), user=user)
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "tart_trio._supervisor",
            "--status-file",
            str(runtime / "s"),
            "--pid-file",
            str(runtime / "p"),
            "--log-file",
            str(runtime / "log"),
            "--uid",
            str(user.uid),
            "--gid",
            str(user.gid),
            "--groups",
            groups,
            "--",
            str(fake_tart_bin),
            "run",
            "vm",
        ],
        capture_stdout=True,
        env=tart.env,
    )
    with trio.fail_after(10):
        while not (runtime / "s").exists():
            await trio.sleep(0.05)
    seen = json.loads((runtime / "log").read_text())
    assert seen["uid"] == tart_user.pw_uid and seen["home"] == tart_user.pw_dir
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


def test_shares_must_be_readable_by_the_tart_user(
    tart_user: pwd.struct_passwd, tmp_path: Path
) -> None:
    user = resolve_user(USER)
    assert user is not None
    public = Path("/tmp") / f"{USER}-share-{os.getpid()}"
    public.mkdir(mode=0o755, exist_ok=True)
    private = public / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    assert readable_by(str(public), user)
    assert not readable_by(str(private), user)
    config = TaskConfig(
        url="ghcr.io/x/y",
        ssh_user="a",
        ssh_password="p",
        directory=(Directory(path=str(private), name="p"),),
    )
    with pytest.raises(ConfigError) as caught:
        check_shares_readable(config, str(public), user)
    assert caught.value.field == "directory[0].path" and USER in str(caught.value)
    check_shares_readable(msgspec.structs.replace(config, directory=()), str(public), user)
    check_shares_readable(config, str(private), None)  # no tart_user: nothing to check
