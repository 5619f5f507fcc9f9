"""Images on a fleet: pulls that wait, image minimums, the cache the scheduler sees,
pre-pull, the disk reserve, the cache budget and pull-only tasks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conformance.conftest import EXAMPLES, launch_args, until
from tests.conformance.nomadsim import NomadSim, NomadSimError, SimStream
from tests.conformance.test_lifecycle import collect, start, vm_names
from tests.faketart.fixtures import LINUX_IMAGE, MACOS_IMAGE, FakeTart, needs_guest_reason

pytestmark = pytest.mark.skipif(needs_guest_reason() is not None, reason=needs_guest_reason() or "")

MIB = 1024 * 1024


def plugin_hcl(*lines: str) -> str:
    body = "\n".join(['    boot_timeout = "30s"', *(f"    {line}" for line in lines)])
    return f'plugin "nomad-driver-tart" {{\n  config {{\n{body}\n  }}\n}}\n'


def job(url: str, extra: str = "") -> str:
    login = '        ssh_user = "admin"\n        ssh_password = "admin"\n'
    return (
        'job "j" {\n  group "g" {\n    task "vm" {\n      driver = "tart"\n'
        f'      config {{\n        url = "{url}"\n{login}{extra}\n      }}\n    }}\n  }}\n}}\n'
    )


async def launch(sim: NomadSim, fake: FakeTart, tmp_path: Path, hcl: str) -> None:
    await sim.call("launch", **launch_args(tmp_path / "plugin.log", **fake.env()))
    await sim.call("set_config", hcl=hcl, with_nomad_config=True)


def staging(fake: FakeTart, ref: str) -> Path:
    """Tart's staging directory of a pull: tmp/<md5 of the image name>."""
    return fake.home / "tmp" / hashlib.md5(ref.encode(), usedforsecurity=False).hexdigest()


def allocated(directory: Path) -> int:
    try:
        return sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file())
    except FileNotFoundError:
        return 0


def cached(fake: FakeTart, ref: str) -> Path:
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    return fake.home / "cache" / "OCIs" / host.replace(":", "%3A") / repo / tag


async def ring(sim: NomadSim, task: dict[str, Any]) -> list[str]:
    """The events `nomad alloc status` shows for the task (Nomad keeps the last ten)."""
    state = await sim.call("task_state", alloc_id=task["task_config"]["alloc_id"], task_name="vm")
    return [e["message"] for e in state["events"]]


async def stop_all(sim: NomadSim, *tasks: dict[str, Any]) -> None:
    for task in tasks:
        await sim.call("stop_task", task_id=task["task_id"], timeout_seconds=5)
        await sim.call("destroy_task", task_id=task["task_id"])


@pytest.mark.slow
async def test_pulls_that_wait_or_print_no_new_percent_are_not_stalled(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    # Tart: one pull per registry host at a time; the waiting one prints "waiting for
    # lock..." and then nothing. And a percent line only when the whole percent changes:
    # at 0.1 %/s the big pull shows 0 % for ten seconds while its bytes arrive.
    big_fields: dict[str, Any] = {
        "os": "linux",
        "download_size": 1_000_000_000,
        "disk_used": 64 * MIB,
        "digest": "sha256:" + "b1" * 32,
    }
    big = fake_tart.add_image("ghcr.io/acme/big", pull_speed=1_000_000, **big_fields)
    small = fake_tart.add_image(
        "ghcr.io/acme/small", os="linux", download_size=50_000_000, pull_speed=100_000_000
    )
    await launch(sim, fake_tart, tmp_path, plugin_hcl('image_pull_inactivity_timeout = "3s"'))
    events: list[dict[str, Any]] = []
    tasks: dict[str, dict[str, Any]] = {}

    async def run(name: str, url: str) -> None:
        tasks[name] = await start(sim, job(url), cores=0, user="bob")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        async with trio.open_nursery() as starting:
            starting.start_soon(run, "big", big)
            await until(lambda: len(fake_tart.calls_of("pull")) == 1)
            starting.start_soon(run, "small", small)
            # seven seconds of bytes at 0 %: more than twice the inactivity timeout
            await until(lambda: allocated(staging(fake_tart, big)) >= 7 * 64 * MIB // 1000, 60)
            await until(lambda: any("Waiting for another download" in e["message"] for e in events))
            fake_tart.add_image("ghcr.io/acme/big", pull_speed=70_000_000, **big_fields)
        for task in tasks.values():
            with trio.fail_after(10):  # the stream may still carry the last driver events
                while not any(m.startswith("VM reachable") for m in await ring(sim, task)):
                    await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert sorted(c[1] for c in fake_tart.calls_of("pull")) == [big, small], "no pull retried"
    for task in tasks.values():
        vm = f"nomad-{task['task_config']['alloc_id']}"
        shown = await ring(sim, task)
        assert len(shown) == 10
        # what matters survives the pull: the VM's name, its IP and our notices
        assert f"VM {vm} started" in shown
        assert any(m.startswith("VM reachable at 127.") for m in shown)
        assert any(m.startswith("The task's user 'bob' is not used") for m in shown)
        assert any(m.startswith("no reserved cores") for m in shown)
    await stop_all(sim, *tasks.values())


async def test_resources_below_the_images_minimum_are_refused_before_cloning(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    # Tart refuses memory/CPU below a macOS image's memorySizeMin/cpuCountMin, and Nomad
    # gives a task 300 MB unless the job says otherwise
    assert fake_tart.tart("pull", MACOS_IMAGE).returncode == 0
    await launch(sim, fake_tart, tmp_path, plugin_hcl())
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job(MACOS_IMAGE), memory_mb=300)
    message = caught.value.message
    assert caught.value.code == "InvalidArgument" and caught.value.recoverable is not True
    for words in ("resources.memory", "300 MB", "4096 MB", "resources { memory = 4096 }"):
        assert words in message, message
    assert fake_tart.calls_of("clone") == [] and fake_tart.calls_of("set") == []
    # not cached yet: it is pulled, and refused before anything is cloned
    tahoe = "ghcr.io/cirruslabs/macos-tahoe-base:latest"
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job(tahoe), cores=2)
    assert "resources.cores" in caught.value.message and "4 CPU cores" in caught.value.message
    assert fake_tart.calls_of("pull")[-1][1] == tahoe
    assert fake_tart.calls_of("clone") == [] and vm_names(fake_tart) == []
    ok = await start(sim, job(MACOS_IMAGE), cores=4, memory_mb=4096)
    await stop_all(sim, ok)


async def fingerprint_where(stream: SimStream, check: Any, messages: int = 2) -> dict[str, str]:
    """The attributes of the first of the next ``messages`` fingerprints where ``check``."""
    seen = []
    with trio.fail_after(30):
        for _ in range(messages):
            fp = await stream.receive()
            attrs = {k: next(iter(v.values())) for k, v in fp["attributes"].items()}
            seen.append(attrs)
            if check(attrs):
                return attrs
    raise AssertionError(f"no fingerprint of {messages} matched: {seen[-1]}")


async def test_pre_pull_keeps_images_present_and_the_scheduler_sees_the_cache(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    slow: dict[str, Any] = {"os": "linux", "download_size": 1_000_000_000}
    ci = fake_tart.add_image(
        "ghcr.io/acme/ci", pull_speed=20_000_000, digest="sha256:" + "c1" * 32, **slow
    )
    private = fake_tart.add_image(
        "registry.acme.test:5000/team/tools",
        os="linux",
        credentials={"username": "robot", "password": "hunter2-secret"},
    )
    pre_pull = (
        f'pre_pull {{\n images = ["{ci}", "{private}"]\n concurrency = 1\n period = "2s"\n'
        ' auth {\n  registry = "registry.acme.test:5000"\n  username = "robot"\n'
        '  password = "hunter2-secret"\n }\n}'
    )
    await launch(sim, fake_tart, tmp_path, plugin_hcl('fingerprint_period = "1s"', pre_pull))
    fingerprints = await sim.open_stream("fingerprint")
    events: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect, await sim.open_stream("task_events"), events)
        task: dict[str, Any] = {}

        async def run() -> None:
            task.update(await start(sim, job(ci)))

        # a task that needs the image arrives while the pre-pull downloads it: it joins
        await until(lambda: fake_tart.calls_of("pull") == [["pull", ci]])
        nursery.start_soon(run)
        await until(lambda: any("the pre-pull is downloading it" in e["message"] for e in events))
        fake_tart.add_image(
            "ghcr.io/acme/ci", pull_speed=500_000_000, digest="sha256:" + "c1" * 32, **slow
        )
        await until(lambda: bool(task), 60)
        nursery.cancel_scope.cancel()
    pulls = [c for c in fake_tart.calls() if c["argv"][0] == "pull"]
    assert [c["argv"][1] for c in pulls[:2]] == [ci, private], "one pull of each, in order"
    assert pulls[1]["time"] >= os.lstat(cached(fake_tart, ci)).st_mtime, "one at a time"
    assert pulls[1]["secrets_set"]["TART_REGISTRY_PASSWORD"]
    assert not pulls[0]["secrets_set"]["TART_REGISTRY_PASSWORD"]
    assert all(c["env"]["TART_NO_AUTO_PRUNE"] == "1" for c in pulls)
    # the node's attributes: tags and digests, comma-separated for set_contains
    attrs = await fingerprint_where(
        fingerprints, lambda a: a.get("driver.tart.images") == f"{ci},{private}", 5
    )
    assert f"ghcr.io/acme/ci@sha256:{'c1' * 32}" in attrs["driver.tart.image_digests"].split(",")
    assert int(attrs["unique.driver.tart.disk_free_gb"]) > 0
    # the tag moves on the registry: the next check follows it
    fake_tart.add_image("ghcr.io/acme/ci", digest="sha256:" + "c2" * 32, **slow)
    await fingerprint_where(
        fingerprints, lambda a: f"sha256:{'c2' * 32}" in a["driver.tart.image_digests"], 10
    )
    # pulled and deleted behind the driver's back: seen within one fingerprint period
    assert fake_tart.tart("pull", LINUX_IMAGE).returncode == 0
    await fingerprint_where(fingerprints, lambda a: LINUX_IMAGE in a["driver.tart.images"])
    assert fake_tart.tart("delete", LINUX_IMAGE).returncode == 0
    await fingerprint_where(fingerprints, lambda a: LINUX_IMAGE not in a["driver.tart.images"])
    await sim.call("close_stream", stream=fingerprints.id)
    await stop_all(sim, task)
    logged = (tmp_path / "plugin.log").read_text()
    assert "hunter2-secret" not in logged and "pre-pull: image is present" in logged
    assert not any("hunter2-secret" in " ".join(c["argv"]) for c in fake_tart.calls())


IMAGES = "driver.tart.images"
DIGESTS = "driver.tart.image_digests"


def set_contains(node: dict[str, str], attribute: str, value: str) -> bool:
    """Nomad's ``set_contains`` constraint on a node attribute (scheduler/feasible): a node
    without the attribute does not match; else every value must be in its comma list."""
    if attribute not in node:
        return False
    listed = {item.strip() for item in node[attribute].split(",")}
    return all(item.strip() in listed for item in value.split(","))


async def node_where(stream: SimStream, check: Any, messages: int = 3) -> dict[str, str]:
    """The node's attributes (as Nomad's client merged the fingerprints) right after the
    first of the next ``messages`` fingerprints where ``check`` holds."""
    seen: dict[str, str] = {}
    with trio.fail_after(30):
        for _ in range(messages):
            await stream.receive()
            assert stream.node is not None
            seen = stream.node["attributes"]
            if check(seen):
                return seen
    raise AssertionError(f"no node of {messages} fingerprints matched: {seen}")


async def test_the_node_offers_an_image_only_while_it_is_cached(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    # what `constraint { attribute = "${attr.driver.tart.images}" operator = "set_contains" }`
    # sees
    def offers(node: dict[str, str]) -> bool:
        return set_contains(node, IMAGES, LINUX_IMAGE)

    await launch(sim, fake_tart, tmp_path, plugin_hcl('fingerprint_period = "1s"'))
    stream = await sim.open_stream("fingerprint")
    node = await node_where(stream, lambda n: True, 1)
    # the client copies a first report whole: the empty lists are there, and match nothing
    assert node[IMAGES] == "" and node[DIGESTS] == "" and not offers(node)
    assert fake_tart.tart("pull", LINUX_IMAGE).returncode == 0
    node = await node_where(stream, offers)
    assert node[DIGESTS].startswith("ghcr.io/cirruslabs/ubuntu@sha256:")
    # removed behind the driver's back: the next fingerprint sends the lists as "", which
    # takes them off the node (a list left out would stay there as it was)
    assert fake_tart.tart("delete", LINUX_IMAGE).returncode == 0
    node = await node_where(stream, lambda n: not offers(n))
    assert IMAGES not in node and DIGESTS not in node

    # the plugin dies while the image is cached, and the image goes while none runs
    assert fake_tart.tart("pull", LINUX_IMAGE).returncode == 0
    await node_where(stream, offers)
    await sim.call("sigkill")
    with trio.fail_after(10):
        async for _ in stream:
            pass
    assert fake_tart.tart("delete", LINUX_IMAGE).returncode == 0
    await launch(sim, fake_tart, tmp_path, plugin_hcl('fingerprint_period = "1s"'))
    stream = await sim.open_stream("fingerprint")
    node = await node_where(stream, lambda n: True, 1)
    reported = (await sim.call("node"))["driver"]["attributes"]
    assert reported[IMAGES] == "" and reported[DIGESTS] == ""
    # Nomad's client answers a failed fingerprint stream with a report of no attributes
    # and compares the next report with that one, so "" from the new process changes
    # nothing: the node still offers the image until the driver's list changes again
    assert offers(node)
    await sim.close_stream(stream)


async def test_a_pull_or_clone_that_cannot_leave_the_reserve_free_fails_before_it_starts(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    free = os.statvfs(fake_tart.home).f_bavail * os.statvfs(fake_tart.home).f_frsize
    huge = fake_tart.add_image(
        "ghcr.io/acme/huge", os="linux", download_size=2 * free, pull_speed=free // 5
    )
    await launch(sim, fake_tart, tmp_path, plugin_hcl("disk_reserve = 1"))
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job(huge))
    message = caught.value.message
    assert caught.value.recoverable is True
    for words in (f"pulling {huge} needs", "GB free", "1.0 GB must stay free", "disk_reserve"):
        assert words in message, message
    assert fake_tart.calls_of("pull") == [["pull", huge]]
    assert not staging(fake_tart, huge).exists(), "no partial download is left"
    assert not cached(fake_tart, huge).exists() and fake_tart.calls_of("clone") == []
    # a cached image whose clone would cross the reserve (set above the free space)
    assert fake_tart.tart("pull", LINUX_IMAGE).returncode == 0
    above = free // 1_000_000_000 + 100
    await sim.call("set_config", hcl=plugin_hcl(f"disk_reserve = {above}"), with_nomad_config=True)
    with pytest.raises(NomadSimError) as caught:
        await start(sim, job(LINUX_IMAGE))
    assert caught.value.recoverable is True and f"cloning {LINUX_IMAGE}" in caught.value.message
    assert fake_tart.calls_of("clone") == []


async def test_the_cache_budget_prunes_only_what_it_may(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    # Tart's prune keeps the most recently used images that fit; the pre-pull's image and
    # the running task's are kept even though they are the least recently used
    refs = {
        name: fake_tart.add_image(f"ghcr.io/acme/{name}", os="linux", disk_used=size * MIB)
        for name, size in (("keep", 300), ("used", 300), ("old", 500), ("new", 500))
    }
    for name in ("keep", "used", "old", "new"):
        assert fake_tart.tart("pull", refs[name]).returncode == 0
    for age, name in ((400, "keep"), (300, "used"), (200, "old"), (100, "new")):
        digest = cached(fake_tart, refs[name]).resolve()
        os.utime(digest, (digest.stat().st_atime - age, digest.stat().st_mtime))
    fake_tart.make_vm("golden", LINUX_IMAGE)  # a local VM: never a cache entry
    await launch(sim, fake_tart, tmp_path, plugin_hcl())
    task = await start(sim, job(refs["used"]))  # cached: no pull of its own
    # now a budget of 1 GB, and a pre-pull whose pull is followed by a prune
    hcl = plugin_hcl(f'pre_pull {{\n images = ["{refs["keep"]}"]\n}}', "image_cache_budget = 1")
    await sim.call("set_config", hcl=hcl, with_nomad_config=True)

    def listed() -> list[str]:
        return fake_tart.tart("list", "--source", "oci", "-q").stdout.split()

    await until(lambda: refs["old"] not in listed() and refs["new"] not in listed())
    assert [name for name in listed() if "@" not in name] == [refs["keep"], refs["used"]]
    assert fake_tart.vm_dir("golden").exists() and len(vm_names(fake_tart)) == 2
    # Tart's own prune, with a budget that covers what must stay (whole GiB)
    assert fake_tart.calls_of("prune") == [["prune", "--entries", "caches", "--space-budget", "1"]]
    await stop_all(sim, task)
    fake_tart.tart("delete", "golden")
    assert "pruned images to the cache budget" in (tmp_path / "plugin.log").read_text()


async def test_a_pull_only_task_warms_the_node_and_exits_0(
    sim: NomadSim, fake_tart: FakeTart, tmp_path: Path
) -> None:
    xcode = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest"
    fake_tart.add_image(xcode, os="darwin", download_size=40_000_000, pull_speed=80_000_000)
    await launch(sim, fake_tart, tmp_path, plugin_hcl())
    job_file = EXAMPLES / "warm-fleet.nomad.hcl"
    for _ in range(2):  # the second time the image is cached: force_pull still asks
        warm = await sim.call(
            "start_task",
            task={"resources": {"memory_mb": 64}},
            job_file=str(job_file),
            create_alloc_dir=True,
        )
        waited = await sim.call("wait_task", task_id=warm["task_id"], timeout_seconds=10)
        assert waited["result"]["exit_code"] == 0 and not waited["err"]
        await sim.call("destroy_task", task_id=warm["task_id"])
    assert fake_tart.calls_of("pull") == [["pull", xcode], ["pull", xcode]]
    assert fake_tart.calls_of("clone") == [] and fake_tart.calls_of("run") == []
    assert cached(fake_tart, xcode).is_symlink()
