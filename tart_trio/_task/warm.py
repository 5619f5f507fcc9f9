"""Warm pools: goldens kept ready per slot, leased to the tasks that match them exactly.

``WarmPools`` runs in the driver's nursery (the real plugin instance only). For every slot
of every ``warm_pool`` it keeps one golden VM (``golden``) that is current (the pool's
configuration, the image's digest, Tart, the host's OS build, ``tart_user``, ``tart_home``
and ``run_in_login_session`` as when it was built, younger than ``max_age``) and has passed
its self-test on this host. Builds run one at a time, only while a macOS VM slot is free
and no task holds the slot. A self-test that fails makes the pool unavailable (a notice in
the fingerprint) until something it depends on changes; two refused restores of one
golden rebuild it, three failed goldens in a row make the pool unavailable too.

A task with ``warm_start = true`` leases a ready slot when it matches its pool exactly
(``lease``), and releases it when its VM is gone. Every other case is a cold boot with the
reason. Who holds a slot is also on disk (the slot's holder file names the VM), so a plugin
restarted meanwhile neither rebuilds a slot in use nor leaks one whose task is gone.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import trio

from tart_trio._config.plugin import PluginConfig, WarmPool
from tart_trio._config.task import TaskConfig, network_mode
from tart_trio._errors import TartTrioError
from tart_trio._model import AttributeValue, Fingerprint, NomadTask
from tart_trio._tart import images, vms
from tart_trio._tart.cli import Tart, TartCommandError
from tart_trio._task import golden, warmlayout
from tart_trio._task.context import TaskContext

log = logging.getLogger("warm")

PREFIX: Final = "driver.tart.warm"
ENABLED: Final = "driver.tart.warm_start"
#: How often the pools are looked at without a reason to (a build or release wakes them).
PERIOD: Final = 30.0
#: A build that found no free macOS VM slot (Apple's limit, VMs of any owner) is tried
#: again this soon; it has not failed.
SLOT_RETRY: Final = 5.0
#: Self-tests of a new golden before the pool is judged unavailable: a failure that does
#: not repeat (a dropped connection) is not the host's verdict.
SELF_TEST_ATTEMPTS: Final = 3
#: A failed build is tried again after this, doubling up to an hour.
RETRY_FIRST: Final = 60.0
RETRY_MAX: Final = 3600.0
#: Refused restores of one golden before it is rebuilt; failed goldens of a pool in a row
#: before the pool is unavailable.
RESTORES_BEFORE_REBUILD: Final = 2
GOLDENS_BEFORE_GIVING_UP: Final = 3


@dataclass
class _Slot:
    slot: warmlayout.Slot
    record: warmlayout.GoldenRecord | None = None
    holder: str = ""
    retry_at: float = 0.0
    retry_delay: float = RETRY_FIRST

    @property
    def ready(self) -> bool:
        return self.record is not None and not self.holder


@dataclass
class _Pool:
    pool: WarmPool
    slots: list[_Slot]
    unavailable: str = ""
    #: What the pool depended on when it became unavailable (a change makes it try again).
    unavailable_for: tuple[str, ...] = ()
    failed_goldens: int = 0
    restore_failures: dict[str, int] = field(default_factory=dict)


def os_build() -> str:
    """The host OS's build (``sw_vers -buildVersion`` on macOS)."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sw_vers", "-buildVersion"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return f"{platform.system()} {platform.release()} {platform.version()}"


class WarmPools:
    """Every warm pool of the plugin's configuration, kept ready in the background."""

    def __init__(
        self,
        config: Callable[[], PluginConfig],
        context: Callable[[], TaskContext],
        changed: Callable[[], None],
    ) -> None:
        self._config = config
        self._context = context
        self._changed = changed
        self._pools: dict[str, _Pool] = {}
        self._wake = trio.Event()
        self._reported: set[str] = set()

    # ---- what tasks and the fingerprint see ------------------------------------------

    def lease(self, task: NomadTask, config: TaskConfig, vm_name: str) -> warmlayout.Lease | str:
        """A ready slot of the pool that serves this task exactly, or why it boots cold."""
        pools = self._config().warm_pool
        if not pools:
            return "no warm_pool is configured on this node"
        wanted = images.canonical(config.url)
        pool = next((p for p in pools if images.canonical(p.image) == wanted), None)
        if pool is None:
            return f"no warm pool on this node serves image {config.url}"
        mismatch = _mismatch(pool, task, config)
        if mismatch:
            return mismatch
        state = self._pools.get(pool.name)
        if state is None or state.pool != pool:
            return f"warm pool {pool.name} is still being prepared"
        if state.unavailable:
            return f"warm pool {pool.name} is unavailable: {state.unavailable}"
        for one in state.slots:
            # A start Nomad repeats (the plugin was killed mid warm start) may take its slot
            # again: the earlier attempt's processes and clone are gone by now.
            if one.record is not None and one.holder in ("", vm_name):
                one.holder = vm_name
                warmlayout.write_holder(one.slot, vm_name)
                self._changed()
                return warmlayout.Lease(one.slot, one.record, pool)
        building = sum(1 for one in state.slots if one.record is None)
        return (
            f"warm pool {pool.name} has no ready slot ({len(state.slots) - building} busy, "
            f"{building} being built)"
        )

    def release(self, key: str, vm_name: str, *, golden_failed: str = "") -> None:
        """The task holding slot ``key`` is gone (``golden_failed``: its restore was refused)."""
        name, _, index = key.partition("/")
        state = self._pools.get(name)
        if state is None or not index.isdigit() or int(index) >= len(state.slots):
            return
        one = state.slots[int(index)]
        if one.holder not in ("", vm_name):
            return
        one.holder = ""
        if warmlayout.read_holder(one.slot) == vm_name:
            warmlayout.write_holder(one.slot, "")
        try:
            warmlayout.reset(one.slot)
        except OSError as exc:
            log.warning("could not reset a warm slot", extra={"slot": key, "error": str(exc)})
        if golden_failed and one.record is not None:
            count = state.restore_failures.get(one.record.vm, 0) + 1
            state.restore_failures[one.record.vm] = count
            if count >= RESTORES_BEFORE_REBUILD:
                log.info(
                    "a golden is built again after refused restores",
                    extra={"vm": one.record.vm, "restores_failed": count},
                )
                one.record = None  # rebuilt by the next round
                warmlayout.write_record(one.slot, None)
        self._changed()
        self._wake.set()

    def apply(self, fp: Fingerprint) -> Fingerprint:
        """The fingerprint with the pools' attributes and notices."""
        pools = self._config().warm_pool
        attributes: dict[str, AttributeValue] = dict(fp.attributes)
        keys: set[str] = set()
        notices: list[str] = []
        usable = 0
        for pool in pools:
            state = self._pools.get(pool.name)
            key = f"{PREFIX}.{pool.name}.ready"
            keys.add(key)
            ready = 0 if state is None else sum(1 for one in state.slots if one.ready)
            attributes[key] = ready
            if state is not None and state.unavailable:
                notices.append(
                    f"Warm pool {pool.name} is unavailable: {state.unavailable}; its jobs "
                    "boot cold."
                )
            else:
                usable += 1
        for gone in self._reported - keys:
            attributes[gone] = ""  # a pool no longer configured
        self._reported = keys
        if not pools:
            attributes[ENABLED] = "disabled"
        else:
            attributes[ENABLED] = "enabled" if usable else "unavailable"
        description = fp.description
        if notices and fp.health == "healthy":
            lead = "Healthy." if description == "Healthy" else description
            description = " ".join([lead, *notices])
        return Fingerprint(attributes, fp.health, description)

    # ---- the background ---------------------------------------------------------------

    async def run(self) -> None:
        """Keep every pool's slots ready until cancelled; nothing here ends the plugin."""
        first = True
        while True:
            wake = self._wake
            try:
                if self._config().warm_pool:
                    if first:
                        await self._clean_up()
                        first = False
                    await self._round()
            except Exception as exc:
                log.error("the warm pools' round failed", exc_info=exc)
            with trio.move_on_after(self._pause()):
                await wake.wait()
            self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    def _pause(self) -> float:
        """Until the next round: the period, or sooner when a slot waits to be retried."""
        now = time.monotonic()
        due = [
            one.retry_at - now
            for state in self._pools.values()
            if not state.unavailable
            for one in state.slots
            if one.record is None and not one.holder and one.retry_at > now
        ]
        return max(0.5, min([PERIOD, *due]))

    async def _host_identity(self, ctx: TaskContext) -> golden.HostIdentity:
        config = self._config()
        tart = ctx.tart
        with trio.fail_after(vms.TART_CALL_SECONDS):
            version = (await tart.run("--version")).strip()
        return golden.HostIdentity(
            tart_path=tart.path,
            tart_version=version,
            os_build=await trio.to_thread.run_sync(os_build),
            tart_user=config.tart_user,
            tart_home=config.tart_home,
            login_session=config.run_in_login_session,
        )

    async def _clean_up(self) -> None:
        """After a plugin start: builds and self-tests it lost are ended and removed."""
        ctx = self._context()
        with trio.fail_after(vms.TART_CALL_SECONDS):
            listed = await ctx.tart.run("list", "--source", "local", "--format", "json")
        for entry in json.loads(listed or "[]"):
            name = str(entry.get("Name", ""))
            if not name.startswith("nomad-warm-"):
                continue
            running = str(entry.get("State", "")).lower() == "running"
            if running or name.endswith("-selftest"):
                log.info("removing a warm VM a plugin before this one left", extra={"vm": name})
                await golden.remove_vm(ctx.tart, name)

    async def _round(self) -> None:
        config = self._config()
        ctx = self._context()
        host = await self._host_identity(ctx)
        root = Path(config.warm_root)
        wanted = {pool.name: pool for pool in config.warm_pool}
        for name in list(self._pools):
            if name not in wanted:
                del self._pools[name]
        local = await _local_vms(ctx.tart)
        before = self._summary()
        for pool in config.warm_pool:
            state = self._pools.get(pool.name)
            if state is None or state.pool != pool:
                state = _Pool(
                    pool,
                    [_Slot(warmlayout.Slot(root, pool.name, i)) for i in range(pool.slots)],
                )
                self._pools[pool.name] = state
            depends = (host.tart_path, host.tart_version, host.os_build, golden.pool_key(pool))
            if state.unavailable and state.unavailable_for != depends:
                state.unavailable, state.failed_goldens = "", 0
            for one in state.slots:
                await self._keep(state, one, host, ctx, local, depends)
        if self._summary() != before:
            self._changed()

    def _summary(self) -> list[tuple[str, int, str]]:
        """What the fingerprint says of the pools (a change is reported at once)."""
        return [
            (name, sum(1 for one in state.slots if one.ready), state.unavailable)
            for name, state in sorted(self._pools.items())
        ]

    async def _keep(
        self,
        state: _Pool,
        one: _Slot,
        host: golden.HostIdentity,
        ctx: TaskContext,
        local: set[str],
        depends: tuple[str, ...],
    ) -> None:
        """One slot: its holder still there, its golden current, else built and tested."""
        slot = one.slot
        holder = warmlayout.read_holder(slot)
        if holder and holder not in local:
            warmlayout.write_holder(slot, "")  # its task is gone
            holder = ""
            if slot.links.exists():
                warmlayout.reset(slot)
        one.holder = holder
        record = one.record or warmlayout.read_record(slot)
        if record is not None:
            digest = golden.image_digest(ctx.tart, state.pool.image)
            why = golden.stale_reason(record, state.pool, host, digest, time.time())
            if not why and record.vm not in local:
                why = "its golden VM is gone"
            if not why and not golden.state_file(ctx.tart, record.vm).exists():
                why = "its golden lost its saved state"
            if why:
                if one.holder:
                    return  # rebuilt once its task is done
                log.info("a golden is stale", extra={"vm": record.vm, "reason": why})
                await golden.remove_vm(ctx.tart, record.vm)
                warmlayout.write_record(slot, None)
                record = None
        one.record = record
        if record is not None or one.holder or state.unavailable:
            return
        if time.monotonic() < one.retry_at:
            return
        running = await vms.running_macos_vms(ctx.tart)
        if len(running) >= ctx.max_macos_vms:
            one.retry_at = time.monotonic() + SLOT_RETRY  # a task's VM comes first
            return
        await self._build(state, one, host, ctx, depends)

    async def _build(
        self,
        state: _Pool,
        one: _Slot,
        host: golden.HostIdentity,
        ctx: TaskContext,
        depends: tuple[str, ...],
    ) -> None:
        slot, pool = one.slot, state.pool
        for stale in slot.base.glob(f"s{slot.index}.json"):
            stale.unlink(missing_ok=True)
        for vm in await _local_vms(ctx.tart):
            if vm.startswith(slot.golden_prefix):
                await golden.remove_vm(ctx.tart, vm)
        log.info("building a golden", extra={"pool": pool.name, "slot": slot.index})
        try:
            record = await golden.build(slot, pool, host, ctx)
        except golden.NoMacOSSlot as exc:
            log.info(
                "a golden waits for a macOS VM slot", extra={"pool": pool.name, "why": str(exc)}
            )
            one.retry_at = time.monotonic() + SLOT_RETRY
            return
        except (TartTrioError, OSError, trio.TooSlowError) as exc:
            self._failed(state, one, f"building its golden failed: {exc}", depends)
            return
        reason = ""
        for _ in range(SELF_TEST_ATTEMPTS):  # a passing one is proof; one failure is not
            try:
                seconds = await golden.self_test(slot, record, pool, ctx)
                reason = ""
                break
            except (golden.WarmFailure, TartTrioError, OSError) as exc:
                reason = exc.reason if isinstance(exc, golden.WarmFailure) else str(exc)
                log.info("a self-test failed", extra={"pool": pool.name, "reason": reason})
        if reason:
            await golden.remove_vm(ctx.tart, record.vm)
            state.unavailable = f"the self-test of its golden failed on this host: {reason}"
            state.unavailable_for = depends
            log.warning(
                "a warm pool's self-test failed", extra={"pool": pool.name, "reason": reason}
            )
            return
        record = _with(record, self_test_seconds=seconds)
        warmlayout.write_record(slot, record)
        one.record = record
        one.retry_delay = RETRY_FIRST
        state.failed_goldens = 0
        log.info(
            "a golden is ready",
            extra={
                "pool": pool.name,
                "slot": slot.index,
                "vm": record.vm,
                "build_s": round(record.build_seconds, 1),
                "suspend_s": round(record.suspend_seconds, 1),
                "state_bytes": record.state_bytes,
                "selftest_s": round(seconds, 1),
            },
        )

    def _failed(self, state: _Pool, one: _Slot, why: str, depends: tuple[str, ...]) -> None:
        log.warning("a golden could not be built", extra={"pool": state.pool.name, "reason": why})
        one.retry_at = time.monotonic() + one.retry_delay
        one.retry_delay = min(one.retry_delay * 2, RETRY_MAX)
        state.failed_goldens += 1
        if state.failed_goldens >= GOLDENS_BEFORE_GIVING_UP:
            state.unavailable = f"{state.failed_goldens} goldens in a row failed ({why})"
            state.unavailable_for = depends


def _with(record: warmlayout.GoldenRecord, **changes: float) -> warmlayout.GoldenRecord:
    return msgspec.structs.replace(record, **changes)


async def _local_vms(tart: Tart) -> set[str]:
    try:
        with trio.fail_after(vms.TART_CALL_SECONDS):
            out = await tart.run("list", "--source", "local", "--quiet")
    except (TartCommandError, trio.TooSlowError):
        return set()
    return set(out.split())


def _mismatch(pool: WarmPool, task: NomadTask, config: TaskConfig) -> str:
    """The first field in which the task differs from what the pool's VMs are."""
    if not config.command:
        return "warm start serves tasks with a command"
    if task.reserved_cores != pool.cores:
        return (
            f"resources.cores is {task.reserved_cores or 'unset'}; warm pool {pool.name}'s "
            f"VMs have {pool.cores}"
        )
    if task.memory_mb != pool.memory:
        return (
            f"resources.memory is {task.memory_mb} MB; warm pool {pool.name}'s VMs have "
            f"{pool.memory} MB"
        )
    mode = network_mode(config.network)
    if mode != pool.network:
        return f"network.mode is {mode}; warm pool {pool.name}'s VMs use {pool.network}"
    if config.network is not None and (
        config.network.softnet_allow or config.network.softnet_expose
    ):
        return "network.softnet_allow and softnet_expose are not applied to warm VMs"
    for field_name, set_ in (
        ("disk_size", config.disk_size > 0),
        ("root_disk", config.root_disk is not None),
        ("show_ui", config.show_ui),
        ("directory", bool(config.directory)),
        ("force_pull", config.force_pull),
    ):
        if set_:
            return f"{field_name} is set; warm VMs are the pool's image as it was built"
    return ""
