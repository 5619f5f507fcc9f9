"""Every fingerprint names every attribute the driver can report, "" where none applies.

Nomad's client keeps an attribute that a fingerprint leaves out and removes one only when
it changes to "" (client/node_updater.go), so a left-out attribute would stay on the node
with whatever it last said.
"""

from __future__ import annotations

import pytest

from tart_trio._config.plugin import PluginConfig
from tart_trio._driver import fingerprint
from tart_trio._driver.fingerprint import ATTRIBUTES, Finding, Probe, report, safe_fingerprint
from tart_trio._task.slots import MacOSSlots
from tests.faketart.fixtures import LINUX_IMAGE, FakeTart

IMAGES = "driver.tart.images"
DIGESTS = "driver.tart.image_digests"


@pytest.fixture
def tart_config(fake_tart: FakeTart, monkeypatch: pytest.MonkeyPatch) -> PluginConfig:
    """The plugin's configuration, run against the fake Tart host."""
    for key, value in fake_tart.env().items():
        monkeypatch.setenv(key, value)
    return PluginConfig(tart_path=str(fake_tart.tart_path))


def test_a_report_names_every_declared_attribute() -> None:
    fp = report({"driver.tart.version": "2.35.0"}, "healthy", "Healthy")
    assert list(fp.attributes) == list(ATTRIBUTES)
    assert fp.attributes["driver.tart.version"] == "2.35.0"
    assert {fp.attributes[key] for key in ATTRIBUTES if key != "driver.tart.version"} == {""}
    assert len(set(ATTRIBUTES)) == len(ATTRIBUTES)
    with pytest.raises(ValueError, match=r"driver\.tart\.surprise"):
        report({"driver.tart.surprise": 1}, "healthy", "Healthy")


async def test_an_empty_image_cache_is_sent_empty_from_the_first_fingerprint(
    fake_tart: FakeTart, tart_config: PluginConfig
) -> None:
    first = MacOSSlots().apply(await safe_fingerprint(tart_config))
    assert first.health == "healthy", first.description
    assert set(first.attributes) == set(ATTRIBUTES)
    assert first.attributes[IMAGES] == "" and first.attributes[DIGESTS] == ""
    assert first.attributes["driver.tart.macos_vm_slots_leaked"] is False

    fake_tart.add_image(LINUX_IMAGE, os="linux")
    assert fake_tart.tart("pull", LINUX_IMAGE).returncode == 0
    cached = await safe_fingerprint(tart_config)
    assert cached.attributes[IMAGES] == LINUX_IMAGE
    assert str(cached.attributes[DIGESTS]).startswith("ghcr.io/cirruslabs/ubuntu@sha256:")

    assert fake_tart.tart("delete", LINUX_IMAGE).returncode == 0
    emptied = await safe_fingerprint(tart_config)
    assert emptied.attributes[IMAGES] == "" and emptied.attributes[DIGESTS] == ""


@pytest.mark.parametrize(
    "config",
    [PluginConfig(enabled=False), PluginConfig(tart_path="/nonexistent/tart")],
    ids=["disabled", "no tart"],
)
async def test_without_tart_every_attribute_is_sent_empty(config: PluginConfig) -> None:
    fp = MacOSSlots().apply(await safe_fingerprint(config))
    assert fp.health == "undetected"
    assert fp.attributes == dict.fromkeys(ATTRIBUTES, "")


async def test_an_undeclared_attribute_makes_the_driver_unhealthy_and_says_which(
    tart_config: PluginConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def something_new(probe: Probe) -> Finding:
        return Finding({"driver.tart.something_new": True})

    concerns = (*fingerprint.CONCERNS, ("something new", something_new))
    monkeypatch.setattr(fingerprint, "CONCERNS", concerns)
    fp = await safe_fingerprint(tart_config)
    assert fp.health == "unhealthy"
    assert "driver.tart.something_new" in fp.description
    assert fp.attributes == dict.fromkeys(ATTRIBUTES, "")
