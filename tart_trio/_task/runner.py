"""One Nomad task: a Tart VM and everything that lives as long as it does.

A TaskRunner runs in the driver's nursery. Its own nursery owns the exit watcher, the
guest log stream and nothing else, so stopping or destroying a task is one cancel. The VM
itself deliberately outlives the plugin process: ``tart run`` belongs to a detached
supervisor that records its exit status (``_host.supervisor``). Starting the VM is
``boot``'s, its bundle ``provision``'s, the task's command ``job``'s.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import trio

from tart_trio._config.task import TaskConfig
from tart_trio._errors import RecoverableError, TartTrioError
from tart_trio._guest import scripts, session, ssh
from tart_trio._guest.cursor import cursor_path
from tart_trio._guest.logs import pump_logs
from tart_trio._guest.sink import Sink
from tart_trio._host import ports, proc
from tart_trio._host.safefs import make_private_dir
from tart_trio._model import ExitResult, NomadTask, TaskEnv, TaskPhase
from tart_trio._tart import vms
from tart_trio._tart.cli import Tart
from tart_trio._task import golden, network, warmlayout, warmstart
from tart_trio._task.boot import Boot, read_status, tail
from tart_trio._task.context import TaskContext
from tart_trio._task.job import CommandJob
from tart_trio._task.provision import Provisioner
from tart_trio._task.state import DriverState

log = logging.getLogger("task")

FORCE_SECONDS: Final = 15.0
SHUTDOWN_SSH_SECONDS: Final = 5.0
GRACEFUL_SIGNALS: Final = frozenset({"", "SIGINT", "SIGTERM", "SIGQUIT", "INT", "TERM", "QUIT"})
POWER_OFF_SIGNALS: Final = frozenset({"SIGKILL", "KILL"})
#: With a command: how long `tart stop` waits before it kills `tart run` (the VM, whose
#: command has ended, is powered off at once: Tart's stop is a hard power-off).
POWER_OFF_GRACE: Final = 2.0


def _forwarding(forwards: tuple[ports.Forward, ...], ip: str) -> str:
    """The task event that names each forwarded port once (TCP and UDP alike)."""
    seen: dict[str, str] = {}
    for one in forwards:
        host = f"[{one.host_ip}]" if ":" in one.host_ip else one.host_ip or "*"
        seen.setdefault(one.label, f"{one.label} {host}:{one.host_port} -> {ip}:{one.guest_port}")
    return "Forwarding ports (tcp and udp): " + ", ".join(seen.values())


class TaskStopped(TartTrioError):
    """The task was stopped before it finished starting."""


def _now() -> datetime:
    return datetime.now(UTC)


class TaskRunner:
    """Lifecycle of one task's VM."""

    def __init__(
        self,
        task: NomadTask,
        config: TaskConfig,
        vm_name: str,
        ctx: TaskContext,
        emit: Callable[[str, dict[str, str]], None],
        *,
        env: TaskEnv | None = None,
    ) -> None:
        self.task = task
        self.config = config
        self.vm_name = vm_name
        self.ctx = ctx
        self._emit = emit
        self.phase: TaskPhase = "starting"
        self.started_at = _now()
        self.completed_at: datetime | None = None
        self.result: ExitResult | None = None
        self.exited = trio.Event()
        self.state: DriverState | None = None
        self.runtime_dir = Path(task.alloc_dir) / task.name / ".tart-driver"
        self._scope = trio.CancelScope()
        self._stop_requested = False
        self.provision = Provisioner(task, config, vm_name, ctx, emit, self.runtime_dir)
        self.boot = Boot(task, config, vm_name, ctx, emit, self.runtime_dir)
        self.supervisor: tuple[int, str | None] | None = None
        #: The SSH connection exec sessions share; closed when the VM ends.
        self.exec_link = session.SharedGuest()
        self.job = CommandJob(config, vm_name, emit, self.runtime_dir, env)
        #: The warm slot this task holds (a warm start), released when the task is gone.
        self.warm_lease: warmlayout.Lease | None = None
        self.warm_key = ""

    # ---- start -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[DriverState]) -> None:
        """Provision, boot and watch the VM; report the driver state once it is reachable."""
        with self._scope:
            try:
                state = await self._start()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._rollback()
                    self._release_warm()
                self.finish(ExitResult(exit_code=1, err="the task did not start"))
                if self._scope.cancel_called and self._stop_requested:
                    raise TaskStopped(
                        "the task was stopped before its VM finished starting"
                    ) from None
                raise
            self.state = state
            self.phase = "running"
            task_status.started(state)
            await self.watch(state)

    async def watch(self, state: DriverState) -> None:
        """Watch the VM until it ends; a bug here ends the task, never the plugin."""
        try:
            await self._watch(state)
        except Exception as exc:
            log.error("watching the VM failed", exc_info=exc, extra={"vm": self.vm_name})
            self.finish(ExitResult(exit_code=1, err=f"the driver lost track of the VM: {exc}"))
        finally:
            with trio.CancelScope(shield=True):
                await self.exec_link.aclose()

    async def _start(self) -> DriverState:
        tart = self.ctx.tart
        try:
            make_private_dir(str(self.runtime_dir))
        except OSError as exc:
            raise TartTrioError(str(exc)) from None
        await self.provision.clear_earlier_attempt(tart)
        forwards = network.forwards(self.task, self.config)
        resumed: golden.Resumed | None = None
        # The ports are held from here, before the clone, until the supervisor binds them.
        with network.reserve(forwards) as reserved:
            if self.config.warm_start:
                resumed = await self._try_warm(tart, reserved, forwards)
            if resumed is None:
                await self.provision.clone(tart)
                await self.provision.configure(tart)
                guest_os = await vms.vm_os(tart, self.vm_name)
                darwin = self.boot.darwin = guest_os == "darwin"
                if darwin:
                    # Apple's limit: one macOS VM at a time between the slot check and run.
                    async with self.ctx.launch_lock:
                        await self.boot.check_macos_slots(tart)
                        reserved.release()
                        self.supervisor = await self.boot.launch(tart, forwards)
                else:
                    reserved.release()
                    self.supervisor = await self.boot.launch(tart, forwards)
        assert self.supervisor is not None
        supervisor_pid, token = self.supervisor
        if resumed is None:
            self._emit(f"VM {self.vm_name} started", {"vm": self.vm_name})
            with trio.move_on_after(self.ctx.boot_timeout) as boot:
                ip, host_key = await self.boot.wait_reachable(tart, supervisor_pid, token)
            if boot.cancelled_caught:
                raise RecoverableError(
                    f"VM {self.vm_name} was not reachable over SSH within "
                    f"{self.ctx.boot_timeout:.0f}s (boot_timeout)"
                )
            self._emit(f"VM reachable at {ip}", {"vm": self.vm_name, "ip": ip})
        else:
            ip, host_key = resumed.ip, resumed.host_key
            guest_os, darwin = "darwin", True
        if forwards:
            network.tell_guest_address(self.runtime_dir, ip, supervisor_pid)
            self._emit(_forwarding(forwards, ip), {"vm": self.vm_name})
        if darwin:
            self.ctx.slots.started()
        if darwin and self.config.disk_size > 0:
            await self.boot.grow_guest_disk(self._address(ip, host_key))
        job = ""
        if self.config.command:
            root = resumed.shares_root if resumed is not None else ""
            job = await self.job.start(self._address(ip, host_key), guest_os, shares_root=root)
        return DriverState(
            vm_name=self.vm_name,
            task_config=self.config,
            supervisor_pid=supervisor_pid,
            supervisor_token=token,
            runtime_dir=str(self.runtime_dir),
            status_file=str(self.runtime_dir / "status.json"),
            tart_path=tart.path,
            tart_home=tart.home,
            started_at=self.started_at.timestamp(),
            ip=ip,
            host_key=host_key,
            stdout_path=self.task.stdout_path,
            stderr_path=self.task.stderr_path,
            command_job=job,
            command_started=time.time() if job else 0.0,
            guest_os=guest_os,
            warm_slot=self.warm_lease.key if self.warm_lease is not None else "",
        )

    async def _try_warm(
        self, tart: Tart, reserved: ports.Reservation, forwards: tuple[ports.Forward, ...]
    ) -> golden.Resumed | None:
        """Resume a clone of a warm pool's golden; None (after saying why) to boot cold."""
        leases = self.ctx.warm
        lease = (
            leases.lease(self.task, self.config, self.vm_name)
            if leases is not None
            else "warm start is not available in this plugin instance"
        )
        if isinstance(lease, str):
            self._emit(f"Cold start: {lease}", {"vm": self.vm_name})
            return None
        assert leases is not None
        self.warm_lease, self.warm_key = lease, lease.key
        self.boot.darwin = True
        began = time.monotonic()
        try:

            def cloned() -> None:
                self.provision.cloned = True

            def launched(supervisor: tuple[int, str | None]) -> None:
                self.supervisor = supervisor

            resumed, clone_seconds = await warmstart.resume_clone(
                tart,
                self.task,
                self.vm_name,
                self.ctx,
                lease,
                self.boot,
                reserved,
                forwards,
                cloned=cloned,
                launched=launched,
            )
        except (golden.WarmFailure, TartTrioError, OSError, trio.TooSlowError) as exc:
            reason = exc.reason if isinstance(exc, golden.WarmFailure) else str(exc)
            if isinstance(exc, trio.TooSlowError):
                reason = (
                    f"the resumed VM did not answer within {lease.pool.resume_timeout} "
                    "(the pool's resume_timeout)"
                )
            at_fault = isinstance(exc, golden.WarmFailure) and exc.golden_at_fault
            log.info(
                "warm start failed",
                extra={"vm": self.vm_name, "fallback_reason": reason, "warm": False},
            )
            with trio.CancelScope(shield=True):
                await self._force_down()
                self.supervisor = None
                await self._delete_vm()
            self.provision.cloned = False
            self.warm_lease, self.warm_key = None, ""
            leases.release(lease.key, self.vm_name, golden_failed=reason if at_fault else "")
            for stale in ("status.json", "tart-run.pid", "tart-run.log"):
                (self.runtime_dir / stale).unlink(missing_ok=True)
            self._emit(f"Warm start failed: {reason}; booting cold", {"vm": self.vm_name})
            return None
        total = time.monotonic() - began
        age = (time.time() - lease.record.built_at) / 60
        self._emit(
            f"Warm start: resumed from pool {lease.slot.pool} slot {lease.slot.index} (golden "
            f"built {age:.0f} min ago) at {resumed.ip}: clone {clone_seconds:.1f}s, restore "
            f"{resumed.restore_seconds:.1f}s, SSH checks {resumed.check_seconds:.1f}s, "
            f"{golden.describe_step(resumed.clock_step)}",
            {"vm": self.vm_name, "ip": resumed.ip},
        )
        log.info(
            "warm start",
            extra={
                "vm": self.vm_name,
                "warm": True,
                "pool": lease.slot.pool,
                "slot": lease.slot.index,
                "clone_ms": round(clone_seconds * 1000),
                "restore_ms": round(resumed.restore_seconds * 1000),
                "check_ms": round(resumed.check_seconds * 1000),
                "clock_step_s": resumed.clock_step,
                "total_ms": round(total * 1000),
            },
        )
        return resumed

    async def _rollback(self) -> None:
        """Undo a partial start: no VM, supervisor or bundle may be left behind."""
        with trio.move_on_after(FORCE_SECONDS + vms.TART_CALL_SECONDS):
            await self._force_down()
            if self.provision.cloned:
                await self._delete_vm()

    # ---- running ---------------------------------------------------------------------

    async def _watch(self, state: DriverState) -> None:
        """Own the exit watcher, the output sinks, the log stream and the command until
        the VM ends."""
        stdout = Sink(state.stdout_path, "stdout", self._report)
        stderr = Sink(state.stderr_path if state.command_job else None, "stderr", self._report)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stdout.run)
                if state.command_job:
                    nursery.start_soon(stderr.run)
                    nursery.start_soon(self._follow_command, state, stdout, stderr)
                if self.config.streams_guest_logs:
                    nursery.start_soon(
                        pump_logs,
                        self._address(state.ip, state.host_key),
                        self.vm_name,
                        cursor_path(state.runtime_dir),
                        self.config.log_command,
                        self._emit,
                        stdout,
                    )
                await proc.wait_exit(state.supervisor_pid, state.supervisor_token)
                nursery.cancel_scope.cancel()
        finally:
            stdout.close()
            stderr.close()
        self.finish(self.vm_result(read_status(Path(state.status_file))))

    def vm_result(self, status: ExitResult | None) -> ExitResult:
        """The task's result once its VM has ended with ``status`` (None: no status)."""
        if self.state is not None and self.state.command_job:
            known = self.job.known_result()
            if known is not None:
                return known
            output = tail(self.runtime_dir / "tart-run.log", 300)
            return ExitResult(
                exit_code=1,
                err="the VM stopped while the command was still running; the command's exit "
                "status is unknown" + (f" (tart run: {output})" if output else ""),
            )
        if status is None:
            return ExitResult(
                exit_code=1, err="the VM supervisor ended without an exit status; the VM was lost"
            )
        return status

    async def _follow_command(self, state: DriverState, stdout: Sink, stderr: Sink) -> None:
        """The task ends with the command; then the VM is powered off (DestroyTask deletes
        it)."""
        await self.job.follow(state, stdout, stderr, self.finish)
        await self._power_off()

    def _address(self, ip: str, host_key: str) -> ssh.GuestAddress:
        return ssh.GuestAddress(
            host=ip, user=self.config.ssh_user, password=self.config.ssh_password, host_key=host_key
        )

    def _report(self, message: str) -> None:
        self._emit(message, {"vm": self.vm_name})

    async def _power_off(self, grace: float = POWER_OFF_GRACE) -> None:
        """Power the VM off (`tart stop`: a hard stop) and wait until it is down."""
        if self.supervisor is None:
            return
        pid, token = self.supervisor
        if not proc.alive(pid, token):
            return
        await self._tart_stop(grace)
        with trio.move_on_after(grace + FORCE_SECONDS):
            await proc.wait_exit(pid, token)
        if proc.alive(pid, token):
            await self._force_down()

    def finish(self, result: ExitResult) -> None:
        if self.exited.is_set():
            return
        self.result = result
        self.phase = "exited"
        self.completed_at = _now()
        self.exited.set()
        what = f"Command {self.config.command!r}" if self.config.command else f"VM {self.vm_name}"
        if result.err:
            self._emit(f"{what} ended: {result.err}", {"vm": self.vm_name})
        else:
            self._emit(
                f"{what} exited with code {result.exit_code}",
                {"vm": self.vm_name, "exit_code": str(result.exit_code)},
            )

    async def end(self, reason: str) -> None:
        """End a running task now, with ``reason`` as its error (the driver's decision)."""
        if self.exited.is_set():
            return
        self.finish(ExitResult(exit_code=1, err=reason))
        await self._power_off(0)

    def adopt(self, state: DriverState) -> None:
        """Take over a VM an earlier plugin process started (recovery)."""
        self.state = state
        self.phase = "running"
        self.started_at = datetime.fromtimestamp(state.started_at, UTC)
        self.runtime_dir = Path(state.runtime_dir)
        self.provision.runtime_dir = self.boot.runtime_dir = self.runtime_dir
        self.supervisor = (state.supervisor_pid, state.supervisor_token)
        self.provision.cloned = True
        self.warm_key = state.warm_slot

    async def watch_recovered(self) -> None:
        """Watch a recovered VM (nothing to do when it had already exited)."""
        if self.state is None or self.exited.is_set():
            return
        with self._scope:
            await self.watch(self.state)

    def process_roots(self) -> tuple[list[int], str]:
        """Processes that make up the VM: the supervisor tree, and the VM's disk image."""
        roots = [self.supervisor[0]] if self.supervisor else []
        return roots, os.path.join(self.ctx.tart.vm_dir(self.vm_name), "disk.img")

    async def signal(self, name: str) -> None:
        """SIGTERM/SIGINT/SIGQUIT: graceful guest shutdown; SIGKILL: power off."""
        upper = name.upper()
        if self.phase != "running" or self.state is None:
            raise TartTrioError(f"task {self.task.id} is not running")
        if self.state.command_job:
            try:
                bare = scripts.signal_name(name)
            except ValueError as exc:
                raise TartTrioError(str(exc)) from None
            if not await self.job.send(self.state, bare):
                raise TartTrioError(f"the command of task {self.task.id} is not running")
            return
        if upper in GRACEFUL_SIGNALS and upper:
            await self._guest_shutdown(self.state)
            return
        if upper in POWER_OFF_SIGNALS:
            await self._tart_stop(0)
            return
        raise TartTrioError(
            f"signal {name!r} is not supported by the tart driver: a VM has no single main "
            "process. Use SIGTERM, SIGINT or SIGQUIT (graceful guest shutdown) or SIGKILL "
            "(power off); to signal a process inside the guest use `nomad alloc exec`"
        )

    # ---- stop / destroy ----------------------------------------------------------------

    async def stop(self, budget: float, signal_name: str) -> None:
        """One budget: ask the guest to shut down, power off, then force; return when down.

        With a command: first the command's process group gets ``signal_name`` and most of
        the budget to exit, then the VM is powered off.
        """
        if self.state is not None and self.state.command_job and self.phase != "starting":
            await self._stop_command(budget, signal_name)
            return
        if self.phase == "exited":
            return
        if self.phase == "starting" or self.state is None:
            self._stop_requested = True
            self._scope.cancel()
            await self.exited.wait()
            return
        name = signal_name.upper()
        with trio.move_on_after(max(budget, 0)):
            if name not in POWER_OFF_SIGNALS:
                await self._guest_shutdown(self.state)
                with trio.move_on_after(max(budget / 2, 1)):
                    await self.exited.wait()
            if not self.exited.is_set():
                await self._tart_stop(budget)
            await self.exited.wait()
        if not self.exited.is_set():
            await self._force_down()
            await self.exited.wait()

    async def _stop_command(self, budget: float, signal_name: str) -> None:
        """The command gets the whole budget (kill_timeout) to exit; then a hard power-off."""
        if not self.exited.is_set():
            try:
                name = scripts.signal_name(signal_name)
            except ValueError:
                log.info("unknown kill_signal; using SIGINT", extra={"signal": signal_name})
                name = "INT"
            with trio.move_on_after(max(budget, 0.0)):
                if await self.job.send(self.state, name):
                    await self.exited.wait()
            if not self.exited.is_set():
                self.finish(ExitResult(exit_code=128 + 9, signal=9))
        await self._power_off(POWER_OFF_GRACE)

    async def _guest_shutdown(self, state: DriverState) -> None:
        address = ssh.GuestAddress(
            host=state.ip,
            user=self.config.ssh_user,
            password=self.config.ssh_password,
            host_key=state.host_key,
        )
        with trio.move_on_after(SHUTDOWN_SSH_SECONDS):
            try:
                async with ssh.open_guest(address) as guest:
                    await guest.shutdown()
            except ssh.GuestError as exc:
                log.info(
                    "guest shutdown over SSH failed; powering off",
                    extra={"vm": self.vm_name, "error": str(exc)},
                )

    async def _tart_stop(self, grace: float) -> None:
        await vms.tart_stop(self.ctx.tart, self.vm_name, grace)

    async def _force_down(self) -> None:
        """SIGTERM the supervisor (it SIGKILLs ``tart run``) and wait for it to end."""
        if self.supervisor is None:
            return
        pid, token = self.supervisor
        proc.signal_process(pid, token, signal.SIGTERM)
        with trio.move_on_after(FORCE_SECONDS):
            await proc.wait_exit(pid, token)

    async def _delete_vm(self) -> None:
        await vms.delete_vm(self.ctx.tart, self.vm_name)

    async def destroy(self) -> None:
        """Stop if needed, delete the VM bundle and the runtime files."""
        if self.phase != "exited":
            await self.stop(0, "SIGKILL")
        self._scope.cancel()
        await self._power_off(0)  # a task whose command ended may still be powering off
        await self._delete_vm()
        self._release_warm()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def _release_warm(self) -> None:
        """Give the warm slot back once this task's VM is gone (its links are the task's)."""
        if self.warm_key and self.ctx.warm is not None:
            self.ctx.warm.release(self.warm_key, self.vm_name)
        self.warm_key, self.warm_lease = "", None
