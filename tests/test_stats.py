"""Which processes hold a VM's disk open: the /proc walk (Linux) and lsof (macOS) agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tart_trio._stats import _holders_linux, _holders_lsof


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """A process holding ``disk.img`` open, reached through a symlinked directory."""
    real = tmp_path / "real"
    real.mkdir()
    disk = real / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    (real / "other.img").write_bytes(b"")
    (tmp_path / "link").symlink_to(real)
    opened = f"f = open({str(disk)!r}, 'rb'); print('open', flush=True); input()"
    proc = subprocess.Popen(
        [sys.executable, "-c", opened], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
        yield tmp_path / "link" / "disk.img", tmp_path / "link" / "other.img", proc.pid
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize(
    "holders",
    [
        _holders_linux,
        pytest.param(
            _holders_lsof,
            marks=pytest.mark.skipif(shutil.which("lsof") is None, reason="lsof is not installed"),
        ),
    ],
)
def test_the_process_holding_a_disk_is_found(
    holder: tuple[Path, Path, int], holders: object
) -> None:
    disk, other, pid = holder
    assert callable(holders)
    found = holders({str(disk), str(other)})
    assert pid in found[str(disk)]
    assert found[str(other)] == set()
