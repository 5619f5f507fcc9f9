"""The VM supervisor writes only into a runtime directory of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _supervise(runtime: Path, marker: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tart_trio._supervisor",
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
