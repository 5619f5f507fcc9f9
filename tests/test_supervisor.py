"""The VM supervisor writes only into a runtime directory of its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio

from tart_trio._host import helpers, proc
from tart_trio._model import ExitResult
from tart_trio._task.boot import read_status


def _supervise(runtime: Path, marker: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *helpers.command(helpers.SUPERVISE),
            "--status-file",
            str(runtime / "status.json"),
            "--pid-file",
            str(runtime / "tart-run.pid"),
            "--log-file",
            str(runtime / "tart-run.log"),
            "--",
            "touch",
            str(marker),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_runtime_directory_others_can_write_or_redirect_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(elsewhere)
    for runtime in (shared, tmp_path / "link"):
        done = _supervise(runtime, marker)
        assert done.returncode == 1 and "runtime directory is unusable" in done.stderr
    assert not marker.exists(), "nothing may run"
    assert list(shared.iterdir()) == [] and list(elsewhere.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
async def test_only_a_status_file_of_our_own_is_believed(tmp_path: Path) -> None:
    """A status file planted by another user cannot report a made-up exit."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    pid = int(_supervise(runtime, tmp_path / "ran").stdout.split()[0])
    with trio.fail_after(10):
        await proc.wait_exit(pid, None)
    status = runtime / "status.json"
    assert read_status(status) == ExitResult(exit_code=0)
    os.link(status, tmp_path / "second-link")  # a hard link: not a file of our own any more
    assert read_status(status) is None
    (tmp_path / "second-link").unlink()
    os.chown(status, 12345, 12345)
    assert read_status(status) is None
