"""Resuming a task's guest log against a real guest: no line is lost or repeated.

The plugin streams ``log stream`` from a fake guest over SSH; a resume replays what the
cursor says was missed with ``log show``. The remote ``log stream`` runs some time before it
reads the log, and the order of the two is arranged here with trio events.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from tart_trio._bridge import open_loop
from tart_trio._guest import logs, ssh
from tart_trio._guest.cursor import Cursor, CursorFile
from tart_trio._guest.sink import Checkpoints, Sink
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

STREAM = ["/usr/bin/log", "stream", "--style", "syslog", "--level", "info"]
LINE = re.compile(r"^(\S+ \S+)  localhost \S+\[\d+\]: seq=(\d+) (.*)$")


class GuestLog:
    """Lines appended to a fake guest's log as its guest init writes them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        *_, last = path.read_text().splitlines()
        match = LINE.match(last)
        assert match is not None
        self.cursor = Cursor(match.group(1), 1)
        self.seq = int(match.group(2))
        self.us = _micros(match.group(1))

    def append(self, message: str) -> None:
        self.us = max(time.time_ns() // 1000, self.us + 1)
        self.seq += 1
        sec, frac = divmod(self.us, 1_000_000)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec)) + f".{frac:06d}+0000"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, f"{stamp}  localhost test[7]: seq={self.seq} {message}\n".encode())
        finally:
            os.close(fd)


def _micros(stamp: str) -> int:
    sec = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) - time.timezone
    return int(sec) * 1_000_000 + int(stamp[20:26])


class LateAttach:
    """The task's guest, whose ``log stream`` runs at once but reads the log only after the
    first replay ran, with one line logged in between (the remote process started, and has
    not opened the log yet). Once it has (its header came), one more line is logged."""

    def __init__(self, guest: ssh.Guest, log: GuestLog) -> None:
        self._guest = guest
        self._log = log
        self._replayed = trio.Event()

    async def stream(
        self,
        argv: Sequence[str],
        on_data: Callable[[bytes], None],
        on_started: Callable[[], None] = lambda: None,
        gate: ssh.Gate | None = None,
    ) -> int:
        on_started()
        await self._replayed.wait()
        attached = False

        def data(chunk: bytes) -> None:
            nonlocal attached
            if not attached:
                attached = True
                self._log.append("logged once the stream reads the log")
            on_data(chunk)

        return await self._guest.stream(argv, data, gate=gate)

    async def run(self, argv: Sequence[str], **kw: Any) -> ssh.ExecResult:
        result = await self._guest.run(argv, **kw)
        if not self._replayed.is_set():
            self._log.append("logged after the replay, before the stream reads the log")
            self._replayed.set()
        return result


async def test_a_stream_that_reads_the_log_after_the_replay_loses_no_line(
    fake_tart: FakeTart, tmp_path: Path
) -> None:
    fake_tart.make_vm("vm", LINUX_IMAGE)
    fake_tart.set_knobs("vm", log_rate=0)  # only the lines this test logs (after boot's)
    vm, ip = fake_tart.start_vm("vm")
    guest_log = GuestLog(fake_tart.vm_dir("vm") / ".faketart" / "guest.log")
    guest_log.append("logged while no plugin ran")  # the cursor is before it
    fifo = tmp_path / "stdout.fifo"
    os.mkfifo(fifo)
    reader = trio.lowlevel.FdStream(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    sink = Sink(str(fifo), "stdout", lambda _: None)
    saved = CursorFile(tmp_path / "log.cursor")
    fed = logs._Fed(guest_log.cursor, Checkpoints[Cursor](sink, saved.save))
    address = ssh.GuestAddress(
        host=ip, user="admin", password="admin", host_key=f"ssh-ed25519 {fake_tart.host_key(ip)}"
    )
    received = b""
    async with open_loop(), ssh.open_guest(address) as real, trio.open_nursery() as nursery:
        guest = LateAttach(real, guest_log)
        nursery.start_soon(sink.run)
        nursery.start_soon(logs._stream, guest, STREAM, sink, tmp_path / "log.cursor", fed)
        with trio.fail_after(20):
            while b"once the stream reads the log" not in received:
                received += await reader.receive_some()
        nursery.cancel_scope.cancel()
    await reader.aclose()
    saved.close()
    vm.kill()
    messages = [m.group(3) for m in map(LINE.match, received.decode().splitlines()) if m]
    assert messages == [
        "logged while no plugin ran",
        "logged after the replay, before the stream reads the log",
        "logged once the stream reads the log",
    ]
