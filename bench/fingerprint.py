"""Benchmark 7: the fingerprint with 50 images in Tart's cache.

Two plugin instances under nomadsim, one whose ``tart_home`` holds 50 pulled images (tag
and digest each: 100 cache rows) and one whose cache is empty, are asked for a fingerprint
in alternating runs: opening the Fingerprint stream makes the plugin probe tart and send
its first report, so the time to that first message is one fingerprint, end to end
(``tart --version``, the local VM list, the OCI cache list, the free disk, gRPC). The
empty cache is the baseline; the cache attributes' own part (``tart list --source oci``
and ``statvfs``) is timed in-process for both homes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from bench.rig import Rig, open_rig
from bench.util import Sample, paired_ratios
from tart_trio._images.cache import fingerprint_attributes
from tart_trio._tart.cli import Tart
from tests.plugin_process import plugin_command

HOSTS = ("ghcr.io", "registry.example.com:5000", "quay.io")


def _populate(rig: Rig, count: int) -> list[str]:
    refs = []
    for i in range(count):
        ref = rig.fake.add_image(
            f"{HOSTS[i % len(HOSTS)]}/bench/macos-image-{i}:{i % 4}",
            os="darwin",
            download_size=1000,
            disk_used=64 * 1024,
        )
        result = rig.fake.tart("pull", ref)
        if result.returncode != 0:
            raise RuntimeError(f"tart pull {ref}: {result.stderr}")
        refs.append(ref)
    return refs


async def _first_fingerprint(rig: Rig, plugin: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    stream = await rig.sim.open_stream("fingerprint", plugin=plugin)
    with trio.fail_after(60):
        first: dict[str, Any] = await stream.receive()
    elapsed = time.perf_counter() - t0
    await rig.sim.call("close_stream", stream=stream.id)
    return elapsed, first


async def _launch(rig: Rig, plugin: str, home: Path) -> None:
    await rig.sim.call(
        "launch",
        plugin=plugin,
        cmd=plugin_command(),
        env=rig.plugin_env(),
        log_file=str(rig.root / f"{plugin}.log"),
    )
    hcl = rig.plugin_hcl(tart_home=str(home), fingerprint_period="1h")
    await rig.sim.call("set_config", plugin=plugin, hcl=hcl, with_nomad_config=True)


async def run(*, runs: int = 15, images: int = 50) -> dict[str, Any]:
    async with open_rig("fingerprint") as rig:
        refs = await trio.to_thread.run_sync(_populate, rig, images)
        empty = rig.root / "tart-home-empty"
        empty.mkdir()
        await _launch(rig, "full", rig.fake.home)
        await _launch(rig, "empty", empty)
        for plugin in ("full", "empty"):  # warm the page cache and the plugins' imports
            await _first_fingerprint(rig, plugin)
        full_fp, empty_fp = Sample(), Sample()
        attributes: dict[str, Any] = {}
        for _ in range(runs):
            seconds, attributes = await _first_fingerprint(rig, "full")
            full_fp.add(seconds)
            empty_fp.add((await _first_fingerprint(rig, "empty"))[0])
        tart = Tart(str(rig.fake.tart_path), str(rig.fake.home), base_env=rig.fake.env())
        tart_empty = Tart(str(rig.fake.tart_path), str(empty), base_env=rig.fake.env())
        part_full, part_empty = Sample(), Sample()
        for _ in range(runs):
            t0 = time.perf_counter()
            found = await fingerprint_attributes(tart)
            part_full.add(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await fingerprint_attributes(tart_empty)
            part_empty.add(time.perf_counter() - t0)
    shown = attributes.get("attributes", {})
    images_attr = next(iter(shown.get("driver.tart.images", {"": ""}).values()))
    return {
        "images": len(refs),
        "listed_tags": len(str(found.get("driver.tart.images", "")).split(",")),
        "attribute_bytes": len(images_attr)
        + len(next(iter(shown.get("driver.tart.image_digests", {"": ""}).values()))),
        "fingerprint_full": full_fp.as_dict(),
        "fingerprint_empty": empty_fp.as_dict(),
        "ratio": paired_ratios(full_fp, empty_fp).as_dict(),
        "cache_part_full": part_full.as_dict(),
        "cache_part_empty": part_empty.as_dict(),
    }
