"""Which processes hold a VM's disk open: the /proc walk (Linux) and lsof (macOS) agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tart_trio._driver.stats import HOLDERS_SECONDS, _holders_linux, _holders_lsof, snapshot


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


def _hold(disk: Path) -> subprocess.Popen[bytes]:
    """A process outside any VM's process tree holding ``disk`` open (like macOS's
    Virtualization service holds a VM's disk image)."""
    opened = f"f = open({str(disk)!r}, 'rb'); print('open', flush=True); input()"
    proc = subprocess.Popen(
        [sys.executable, "-c", opened], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
    return proc


def _release(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait()
    proc.stdout.close()


async def test_a_vm_disks_holder_is_counted_and_a_new_one_is_found(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    first = _hold(disk)
    try:
        _, procs = snapshot([], str(disk))
        assert first.pid in procs, "the holder's CPU and memory count for the VM"
    finally:
        _release(first)
    second = _hold(disk)  # the VM restarted: another process holds the disk now
    try:
        with trio.fail_after(HOLDERS_SECONDS + 5):
            while second.pid not in snapshot([], str(disk))[1]:
                await trio.sleep(0.2)
    finally:
        _release(second)
