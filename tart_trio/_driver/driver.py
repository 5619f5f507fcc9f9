"""The driver: plugin config, capabilities, fingerprinting, events and the task table."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import trio

from tart_trio._config.decode import decode_plugin_config, decode_task_config
from tart_trio._config.plugin import PluginConfig
from tart_trio._config.task import check_ports, command_shares
from tart_trio._driver import capabilities, fingerprint, stats
from tart_trio._driver.diskguard import guard_shares
from tart_trio._driver.events import EventBus
from tart_trio._driver.names import VMNames
from tart_trio._driver.policy import check_task, share_with_tart_user
from tart_trio._driver.reconcile import run_reconciler
from tart_trio._errors import TartTrioError, TaskNotFound
from tart_trio._host import diskspace, login
from tart_trio._host.shares import share_command_dirs
from tart_trio._host.users import resolve_user
from tart_trio._images import cache as imagecache
from tart_trio._images import prepull
from tart_trio._images.pulls import Pulls
from tart_trio._model import (
    Capabilities,
    ExecOutput,
    ExitResult,
    Fingerprint,
    HostCompute,
    NomadTask,
    PluginInfo,
    ResourceUsage,
    TaskEnv,
    TaskEvent,
    TaskStatus,
)
from tart_trio._tart.cli import Tart, TartNotFound, locate_tart
from tart_trio._task import exec as task_exec
from tart_trio._task.context import TaskContext
from tart_trio._task.pull_only import PullOnlyRunner
from tart_trio._task.recovery import recover_runner
from tart_trio._task.runner import TaskRunner
from tart_trio._task.slots import MacOSSlots
from tart_trio._task.state import DriverState, decode_state, encode_state
from tart_trio._task.warm import WarmPools
from tart_trio._version import __version__

NAME: Final = "tart"
API_VERSIONS: Final = ("v0.1.0",)
log = logging.getLogger("driver")


class _Unexpected:
    """Logs each distinct unexpected error of a stream once; the stream goes on.

    Nomad treats an ended Fingerprint, TaskEvents or TaskStats stream as a broken plugin
    or task, so a sample or event that cannot be made or sent is skipped instead.
    """

    def __init__(self, stream: str) -> None:
        self._stream = stream
        self._seen: set[str] = set()

    def __call__(self, exc: Exception, **context: str) -> None:
        key = f"{type(exc).__name__}: {exc}"
        if key in self._seen:
            return
        if len(self._seen) < 100:
            self._seen.add(key)
        log.error(
            f"{self._stream}: skipped after an unexpected error; the stream goes on",
            exc_info=exc,
            extra=context,
        )


class Driver:
    """Domain entry point behind the rpc layer. Pure trio."""

    def __init__(self) -> None:
        self.config = PluginConfig()
        self.api_version = ""
        self.client_port_range: tuple[int, int] | None = None
        self.host_compute: HostCompute | None = None
        self.events = EventBus()
        self._config_changed = trio.Event()
        self._new_config = trio.Event()
        self._tasks: dict[str, TaskRunner] = {}
        self._recovering: dict[str, trio.Event] = {}
        self.names = VMNames()
        self._nursery: trio.Nursery | None = None
        self._pulls: Pulls | None = None
        self._serving = trio.Event()
        self._launch_lock = trio.Lock()
        self._provision_lock = trio.Lock()
        self.slots = MacOSSlots(self._fingerprint_soon)
        self.warm = WarmPools(lambda: self.config, self._context, self._fingerprint_soon)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own every task's runner and the shared pulls until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._pulls = Pulls(nursery, after_pull=self._after_pull)
            task_status.started()
            # Only the client's real plugin instance (SetConfig with nomad_config) manages
            # VMs on its own; the throwaway fingerprint and validation launches never do.
            await self._serving.wait()
            nursery.start_soon(prepull.keep_images, self._prepull_context())
            nursery.start_soon(self.warm.run)
            nursery.start_soon(
                guard_shares, lambda: list(self._tasks.values()), lambda: self.config.disk_reserve
            )
            await run_reconciler(self._tart, self.names.owned, lambda: self.config.gc_config)

    def plugin_info(self) -> PluginInfo:
        """Name, version and the plugin API versions we speak."""
        return PluginInfo(name=NAME, version=__version__, api_versions=API_VERSIONS)

    def set_config(
        self,
        msgpack_config: bytes,
        api_version: str,
        client_ports: tuple[int, int] | None,
        topology: tuple[list[int], int] | None = None,
    ) -> None:
        """Decode and keep the agent's plugin config. Cheap and free of side effects.

        ``topology`` is the host's CPU as Nomad sees it (each core's MHz, the operator's
        total-compute override), which task stats report their MHz against.
        """
        self.config = decode_plugin_config(msgpack_config)
        self.api_version = api_version
        if client_ports is not None:
            self.client_port_range = client_ports
            self.host_compute = stats.host_compute(*topology) if topology else None
            self._serving.set()
        self._fingerprint_soon()
        self._new_config.set()  # the pre-pull follows a new image list at once
        self.warm.wake()
        self._new_config = trio.Event()
        log.debug("plugin configured", extra={"api_version": api_version})

    def _fingerprint_soon(self) -> None:
        """Report to Nomad now, not at the next period: what it schedules on changed."""
        self._config_changed.set()
        self._config_changed = trio.Event()

    def capabilities(self) -> Capabilities:
        """What works: stop/destroy/signals/exec; the VM is its own image and network."""
        return Capabilities(
            send_signals=True,
            exec=True,
            fs_isolation="image",
            network_isolation_modes=("host",),
            must_create_network=False,
            mount_configs="none",
            disable_log_collection=False,
            dynamic_workload_users=False,
        )

    async def watch_fingerprints(self, deliver: Callable[[Fingerprint], Awaitable[None]]) -> None:
        """Deliver a fingerprint at once, then every period and whenever the config changes.

        Never returns on its own: Nomad treats an ended stream as a dead plugin.
        """
        unexpected = _Unexpected("Fingerprint")
        while True:
            changed = self._config_changed
            current = self.warm.apply(
                self.slots.apply(await fingerprint.safe_fingerprint(self.config))
            )
            try:
                await deliver(current)
            except Exception as exc:
                unexpected(exc)
            with trio.move_on_after(self.config.fingerprint_period_seconds):
                await changed.wait()

    async def watch_events(self, deliver: Callable[[TaskEvent], Awaitable[None]]) -> None:
        """Deliver every task event until cancelled; one that cannot be sent is skipped."""
        unexpected = _Unexpected("TaskEvents")

        async def deliver_one(event: TaskEvent) -> None:
            try:
                await deliver(event)
            except Exception as exc:
                unexpected(exc, task_id=event.task_id)

        await self.events.subscribe(deliver_one)

    # ---- tasks -----------------------------------------------------------------------

    def _tart(self) -> Tart:
        path = locate_tart(self.config.tart_path)
        if path is None:
            raise TartNotFound("the tart executable was not found (set tart_path)")
        return Tart(path, self.config.tart_home, user=resolve_user(self.config.tart_user))

    def _context(self) -> TaskContext:
        assert self._pulls is not None
        tart = self._tart()
        return TaskContext(
            tart=tart,
            pulls=self._pulls,
            boot_timeout=self.config.seconds("boot_timeout"),
            pull_timeout=self.config.seconds("image_pull_timeout"),
            pull_inactivity=self.config.seconds("image_pull_inactivity_timeout"),
            max_macos_vms=self.config.max_macos_vms,
            launch_lock=self._launch_lock,
            provision_lock=self._provision_lock,
            slots=self.slots,
            launch_prefix=self._launch_prefix(tart),
            disk_reserve=diskspace.reserve_bytes(tart.home_dir, self.config.disk_reserve),
            warm=self.warm,
        )

    def _launch_prefix(self, tart: Tart) -> tuple[str, ...]:
        """``launchctl asuser UID`` with ``run_in_login_session`` (the fingerprint says
        when launchctl is missing)."""
        if not self.config.run_in_login_session or tart.user is None:
            return ()
        launchctl = login.launchctl(tart.env)
        return () if launchctl is None else tuple(login.in_session_of(launchctl, tart.user.uid))

    # ---- images ------------------------------------------------------------------------

    def _prepull_context(self) -> prepull.PrePullContext:
        assert self._pulls is not None

        def space_check(tart: Tart, url: str) -> Callable[[int], None]:
            reserve = diskspace.reserve_bytes(tart.home_dir, self.config.disk_reserve)

            def check(needed: int) -> None:
                diskspace.require(tart.home_dir, reserve, needed, f"pulling {url}")

            return check

        return prepull.PrePullContext(
            config=lambda: self.config,
            tart=self._tart,
            pulls=self._pulls,
            space_check=space_check,
            changed=lambda: self._new_config,
        )

    def _images_in_use(self) -> set[str]:
        """Images the cache budget never prunes: the pre-pull's and every task's."""
        keep = {runner.config.url for runner in self._tasks.values()}
        if self.config.pre_pull is not None:
            keep.update(self.config.pre_pull.images)
        return keep

    async def _after_pull(self, image: str) -> None:
        """A pull finished: report the cache at once, and prune it to the budget."""
        self._fingerprint_soon()
        budget = self.config.image_cache_budget
        if budget is None:
            return
        try:
            # no clone runs while Tart prunes, and every task that needs an image is in
            # the task table before it looks for it
            async with self._provision_lock:
                removed = await imagecache.prune_to_budget(
                    self._tart(), budget * diskspace.GB, self._images_in_use()
                )
        except Exception as exc:
            log.warning("pruning the image cache failed", extra={"error": str(exc)})
            return
        if removed:
            log.info(
                "pruned images to the cache budget",
                extra={"budget_gb": budget, "removed": ",".join(removed), "after": image},
            )
            self._fingerprint_soon()

    def _emitter(self, task: NomadTask) -> Callable[[str, dict[str, str]], None]:
        def emit(message: str, annotations: dict[str, str]) -> None:
            self.events.publish(
                TaskEvent(
                    task_id=task.id,
                    alloc_id=task.alloc_id,
                    task_name=task.name,
                    timestamp=datetime.now(UTC),
                    message=message,
                    annotations=annotations,
                )
            )
            log.info(message, extra={"alloc_id": task.alloc_id, "task": task.name})

        return emit

    async def start_task(
        self, task: NomadTask, msgpack_config: bytes, env: TaskEnv | None = None
    ) -> tuple[bytes, str]:
        """Validate, clone, configure and boot the VM; return the driver state.

        ``env`` reaches only a ``command`` in the guest (see TaskEnv).
        """
        if not self.config.enabled:
            raise TartTrioError("the tart driver is disabled (enabled = false)")
        if task.id in self._tasks:
            raise TartTrioError(f"task {task.id} is already running")
        config = decode_task_config(msgpack_config)
        check_task(self.config, config)
        check_ports(config, {port.label for port in task.ports})
        ctx = self._context()
        await capabilities.check_task(config, ctx.tart)
        secrets = os.path.join(task.alloc_dir, task.name, "secrets")
        share_with_tart_user(config, secrets, ctx.tart.user)
        if config.command:
            share_command_dirs(command_shares(task.alloc_dir, task.name), ctx.tart.user)
        vm_name = await self.names.claim(task, ctx.tart)
        emit = self._emitter(task)
        runner: TaskRunner
        if config.pull_only:
            emit(f"Making image {config.url} present on this node (pull_only)", {})
            runner = PullOnlyRunner(task, config, vm_name, ctx, emit)
        else:
            emit(f"Starting VM {vm_name} from {config.url}", {"vm": vm_name})
            runner = TaskRunner(task, config, vm_name, ctx, emit, env=env)
        self._tasks[task.id] = runner
        assert self._nursery is not None
        try:
            state: DriverState = await self._nursery.start(runner.run)
        except BaseException:
            self._tasks.pop(task.id, None)
            self.names.release(vm_name)
            raise
        return encode_state(state), state.ip

    def _runner(self, task_id: str) -> TaskRunner:
        runner = self._tasks.get(task_id)
        if runner is None:
            raise TaskNotFound(task_id)
        return runner

    async def recover_task(self, task: NomadTask, driver_state: bytes) -> None:
        """Reattach to a VM started by an earlier plugin process; never start it again."""
        if task.id in self._tasks:
            return
        pending = self._recovering.get(task.id)
        if pending is not None:
            await pending.wait()
            self._runner(task.id)
            return
        self._recovering[task.id] = done = trio.Event()
        try:
            state = decode_state(driver_state)
            runner = await recover_runner(task, state, self._context(), self._emitter(task))
            self.names.hold(state.vm_name)
            self._tasks[task.id] = runner
            assert self._nursery is not None
            self._nursery.start_soon(runner.watch_recovered)
        finally:
            del self._recovering[task.id]
            done.set()

    async def wait_task(self, task_id: str) -> ExitResult:
        """Block until the task's VM ends; answer at once afterwards."""
        runner = self._runner(task_id)
        await runner.exited.wait()
        assert runner.result is not None
        return runner.result

    async def stop_task(self, task_id: str, budget: float, signal: str) -> None:
        """Shut the VM down within ``budget`` seconds; return once it is down."""
        runner = self._tasks.get(task_id)
        if runner is None:
            return  # already gone: stopping it is done
        await runner.stop(budget, signal)

    async def destroy_task(self, task_id: str, force: bool) -> None:
        """Stop if needed, delete the VM bundle, forget the task. Idempotent."""
        runner = self._tasks.get(task_id)
        if runner is None:
            if force:
                await self._destroy_unknown(task_id)
            return
        if runner.phase != "exited" and not force:
            raise TartTrioError(f"task {task_id} is still running; stop it or use force")
        await runner.destroy()
        self._tasks.pop(task_id, None)
        self.names.release(runner.vm_name)

    async def _destroy_unknown(self, task_id: str) -> None:
        """DestroyTask(force) of a task this plugin does not know: remove its VM now."""
        try:
            tart = self._tart()
        except TartTrioError as exc:
            log.warning("cannot remove the VM of an unknown task", extra={"error": str(exc)})
            return
        await self.names.remove_unknown(task_id, tart)

    def inspect_task(self, task_id: str) -> TaskStatus:
        """The task's state, timestamps, result and attributes (VM name, IP)."""
        runner = self._runner(task_id)
        attributes = {"vm_name": runner.vm_name}
        if runner.state is not None:
            attributes["ip"] = runner.state.ip
        return TaskStatus(
            id=task_id,
            name=runner.task.name,
            phase=runner.phase,
            started_at=runner.started_at,
            completed_at=runner.completed_at,
            result=runner.result,
            attributes=attributes,
        )

    async def signal_task(self, task_id: str, signal: str) -> None:
        """Deliver a signal as documented in the README's signal mapping."""
        await self._runner(task_id).signal(signal)

    async def watch_stats(
        self, task_id: str, interval: float, deliver: Callable[[ResourceUsage], Awaitable[None]]
    ) -> None:
        """Sample the VM's processes every ``interval`` until the task ends or we are cancelled."""
        runner = self._runner(task_id)
        compute = self.host_compute or stats.task_compute(runner.task)
        sampler = stats.Sampler(runner.process_roots, compute)
        unexpected = _Unexpected("TaskStats")
        while not runner.exited.is_set():
            try:
                await deliver(await sampler.sample())
            except Exception as exc:
                unexpected(exc, task_id=task_id)
            with trio.move_on_after(max(interval, 0.1)):
                await runner.exited.wait()

    async def exec_task(
        self, task_id: str, command: Sequence[str], time_limit: float
    ) -> ExecOutput:
        """Run a command in the guest (script checks); killed there after ``time_limit`` s."""
        return await task_exec.run_command(self._runner(task_id), command, time_limit)

    async def exec_streaming(
        self,
        task_id: str,
        command: Sequence[str],
        tty: bool,
        receive: task_exec.Receive,
        send: task_exec.Send,
    ) -> ExitResult:
        """``nomad alloc exec``: an interactive session in the guest until the command ends."""
        return await task_exec.run_session(self._runner(task_id), command, tty, receive, send)
