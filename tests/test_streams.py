"""An event or a stats sample that cannot be sent never ends the TaskEvents or TaskStats
stream: Nomad reads an ended stream as a dead plugin or task.

The driver runs in this process against the fake tart; what cannot be sent is an event
or sample its consumer (the rpc layer, which encodes and sends it) fails on once.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import msgspec
import pytest
import trio

from tart_trio._bridge import open_loop
from tart_trio._config.plugin import PluginConfig
from tart_trio._config.task import TaskConfig
from tart_trio._driver.driver import Driver
from tart_trio._model import NomadTask, ResourceUsage, TaskEvent
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")


class FailsOnce:
    """A consumer that cannot take the first item (as if it could not be encoded)."""

    def __init__(self) -> None:
        self.taken: list[object] = []
        self.failed = False
        self.more = trio.Event()

    async def __call__(self, item: object) -> None:
        if not self.failed:
            self.failed = True
            raise ValueError("this item cannot be encoded")
        self.taken.append(item)
        if len(self.taken) >= 2:
            self.more.set()


async def test_a_failed_event_or_sample_is_skipped_and_the_stream_goes_on(
    fake_tart: FakeTart,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for key, value in fake_tart.env().items():
        monkeypatch.setenv(key, value)
    driver = Driver()
    plugin = PluginConfig(tart_home=str(fake_tart.home), boot_timeout="30s")
    config = TaskConfig(url=LINUX_IMAGE, ssh_user="admin", ssh_password="admin")
    alloc = str(uuid.uuid4())
    task = NomadTask(id=f"{alloc}/vm/1", name="vm", alloc_id=alloc, alloc_dir=str(tmp_path / alloc))
    (tmp_path / alloc / "vm" / "secrets").mkdir(parents=True)
    events, samples = FailsOnce(), FailsOnce()
    async with open_loop(), trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        driver.set_config(msgspec.msgpack.encode(plugin), "v0.1.0", (14000, 14512))
        nursery.start_soon(driver.watch_events, events)
        await driver.start_task(task, msgspec.msgpack.encode(config))
        nursery.start_soon(driver.watch_stats, task.id, 0.1, samples)
        with trio.fail_after(20):
            await events.more.wait()
            await samples.more.wait()
        await driver.stop_task(task.id, 5, "")
        await driver.destroy_task(task.id, True)
        nursery.cancel_scope.cancel()
    assert all(isinstance(e, TaskEvent) for e in events.taken)
    assert all(isinstance(s, ResourceUsage) for s in samples.taken)
    skipped = [r for r in caplog.records if "the stream goes on" in r.getMessage()]
    assert {r.getMessage().split(":")[0] for r in skipped} == {"TaskEvents", "TaskStats"}
    assert all(r.levelno == logging.ERROR and r.exc_info for r in skipped)
