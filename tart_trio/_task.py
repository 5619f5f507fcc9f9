"""One Nomad task: a Tart VM and everything that lives as long as it does.

A TaskRunner runs in the driver's nursery. Its own nursery owns the exit watcher, the
guest log stream and nothing else, so stopping or destroying a task is one cancel. The VM
itself deliberately outlives the plugin process: ``tart run`` belongs to a detached
supervisor that records its exit status (see ``_supervisor``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec
import trio

from tart_trio import _diskspace, _proc
from tart_trio._config import TaskConfig, network_mode
from tart_trio._errors import ConfigError, RecoverableError, TartTrioError
from tart_trio._groups import single_errors
from tart_trio._guest import command, disk, session, ssh
from tart_trio._guest.logs import pump_logs
from tart_trio._guest.sink import Sink
from tart_trio._model import ExitResult, NomadTask, TaskEnv, TaskPhase
from tart_trio._pulls import ProgressThrottle, PullListener, Pulls
from tart_trio._safefs import make_private_dir, open_own_file
from tart_trio._slots import MacOSSlots
from tart_trio._state import DriverState
from tart_trio._tart import argv as tart_argv
from tart_trio._tart import images, processes, versions, vms
from tart_trio._tart.cli import Tart, TartCommandError

log = logging.getLogger("task")

TART_CALL_SECONDS: Final = 120.0
FAILED_TO_START: Final = "The virtual machine failed to start."
MACOS_START_HINT: Final = (
    "macOS 15.2 and later guests start only in the GUI login session of the user that runs "
    "tart, or with its login keychain unlocked: see driver.tart.login_session and the "
    "plugin option run_in_login_session"
)
FORCE_SECONDS: Final = 15.0
SHUTDOWN_SSH_SECONDS: Final = 5.0
#: How long growing a macOS guest's APFS container may take (repairDisk, resizeContainer).
GROW_DISK_SECONDS: Final = 300.0
PROGRESS_EVERY: Final = 10.0
CLONE_ATTEMPTS: Final = 3
GRACEFUL_SIGNALS: Final = frozenset({"", "SIGINT", "SIGTERM", "SIGQUIT", "INT", "TERM", "QUIT"})
POWER_OFF_SIGNALS: Final = frozenset({"SIGKILL", "KILL"})
#: Runtime files an earlier run of the task may have left (a new run starts without them).
STALE_RUNTIME_FILES: Final = (
    "status.json",
    "tart-run.pid",
    "tart-run.log",
    "log.cursor",
    "command.offsets",
    "command.result",
)
#: With a command: how long `tart stop` waits before it kills `tart run` (the VM, whose
#: command has ended, is powered off at once: Tart's stop is a hard power-off).
POWER_OFF_GRACE: Final = 2.0
#: A command's ``timeout`` is enforced in the guest; the plugin gives up on a guest that
#: has not reported the end this long after the timeout and its SIGKILL grace.
TIMEOUT_BACKSTOP: Final = 30.0


class TaskStopped(TartTrioError):
    """The task was stopped before it finished starting."""


@dataclass(frozen=True)
class TaskContext:
    """What a task needs from the driver: tart, shared pulls and the plugin's timeouts."""

    tart: Tart
    pulls: Pulls
    boot_timeout: float
    pull_timeout: float
    pull_inactivity: float
    max_macos_vms: int
    launch_lock: trio.Lock
    provision_lock: trio.Lock
    slots: MacOSSlots
    #: Before the supervisor's command: starts it in tart_user's login session
    #: (``run_in_login_session``), so that ``tart run`` runs there.
    launch_prefix: tuple[str, ...] = ()
    disk_reserve: int = 0


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
        self._cloned = False
        self._darwin = False
        self.supervisor: tuple[int, str | None] | None = None
        #: The SSH connection exec sessions share; closed when the VM ends.
        self.exec_link = session.SharedGuest()
        #: The task's environment, for the command; dropped once the command started.
        self._env = env
        #: How the command ended, as soon as that is known (its output may still flow).
        self._command_result: ExitResult | None = None
        #: Whether we sent the command's group SIGKILL (which ends its runner too).
        self._sent_kill = False

    # ---- start -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[DriverState]) -> None:
        """Provision, boot and watch the VM; report the driver state once it is reachable."""
        with self._scope:
            try:
                state = await self._start()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._rollback()
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
        await self._clear_earlier_attempt(tart)
        await self._clone(tart)
        await self._configure(tart)
        guest_os = await vms.vm_os(tart, self.vm_name)
        darwin = self._darwin = guest_os == "darwin"
        if darwin:
            # Apple's limit: one macOS VM at a time between the slot check and tart run.
            async with self.ctx.launch_lock:
                await self._check_macos_slots(tart)
                supervisor_pid, token = await self._launch(tart)
        else:
            supervisor_pid, token = await self._launch(tart)
        self._emit(f"VM {self.vm_name} started", {"vm": self.vm_name})
        with trio.move_on_after(self.ctx.boot_timeout) as boot:
            ip, host_key = await self._wait_reachable(tart, supervisor_pid, token)
        if boot.cancelled_caught:
            raise RecoverableError(
                f"VM {self.vm_name} was not reachable over SSH within "
                f"{self.ctx.boot_timeout:.0f}s (boot_timeout)"
            )
        self._emit(f"VM reachable at {ip}", {"vm": self.vm_name, "ip": ip})
        if darwin:
            self.ctx.slots.started()
        if darwin and self.config.disk_size > 0:
            await self._grow_guest_disk(
                ssh.GuestAddress(
                    host=ip,
                    user=self.config.ssh_user,
                    password=self.config.ssh_password,
                    host_key=host_key,
                )
            )
        job = await self._start_command(ip, host_key, guest_os) if self.config.command else ""
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
        )

    async def _grow_guest_disk(self, address: ssh.GuestAddress) -> None:
        """Let macOS use what ``disk_size`` added; a failure is reported, never fatal."""
        problem = ""
        with trio.move_on_after(GROW_DISK_SECONDS) as bounded:
            try:
                async with ssh.open_guest(address) as guest:
                    grown = await disk.grow_system_container(guest, address.password)
            except ssh.GuestError as exc:
                problem = str(exc)
            else:
                if grown is not None:
                    self._emit(grown.message, {"vm": self.vm_name})
                return
        if bounded.cancelled_caught:
            problem = f"it did not finish within {GROW_DISK_SECONDS:.0f}s"
        self._emit(
            f"Could not grow the guest's system container to the VM's disk_size: {problem}; "
            "the VM runs with the space its image had",
            {"vm": self.vm_name},
        )

    async def _start_command(self, ip: str, host_key: str, guest_os: str) -> str:
        """Start the task's command in the guest, detached; its job name there."""
        job = secrets.token_hex(8)
        env, skipped = command.env_file(
            dict(self._env.items()) if self._env is not None else {},
            command.shares_root(guest_os),
        )
        self._env = None  # held no longer than needed
        if skipped:
            self._emit(
                f"{len(skipped)} environment variables are not passed to the command: their "
                "names are not shell identifiers, or their values hold a NUL byte "
                f"({', '.join(skipped[:5])})",
                {"vm": self.vm_name},
            )
        address = ssh.GuestAddress(
            host=ip, user=self.config.ssh_user, password=self.config.ssh_password, host_key=host_key
        )
        argv = [self.config.command, *self.config.args]
        try:
            async with ssh.open_guest(address) as guest:
                await command.launch(
                    guest,
                    job,
                    argv,
                    work_dir=self.config.work_dir,
                    guest_os=guest_os,
                    time_limit=self.config.timeout_seconds,
                    env=env,
                )
        except command.CommandError as exc:
            raise TartTrioError(str(exc)) from None
        except ssh.HostKeyMismatch:
            raise
        except ssh.GuestError as exc:
            raise RecoverableError(
                f"starting the command in VM {self.vm_name} failed: {exc}"
            ) from exc
        self._emit(f"Command {self.config.command!r} started in the guest", {"vm": self.vm_name})
        return job

    def _credentials(self) -> dict[str, str]:
        """Registry credentials for this task's tart calls only (never argv, never stored)."""
        if self.config.auth is None:
            return {}
        env = {
            "TART_REGISTRY_USERNAME": self.config.auth.username,
            "TART_REGISTRY_PASSWORD": self.config.auth.password,
        }
        host = self.config.url.split("/", 1)[0]
        return {**env, "TART_REGISTRY_HOSTNAME": host}

    async def _clear_earlier_attempt(self, tart: Tart) -> None:
        """End what an earlier run of this task left running, then remove its leftovers.

        No task of ours owns this name (it was free in the task table), so anything acting
        on it belongs to an earlier run of this task: typically a start that Nomad cut
        short by killing the plugin, which leaves its `tart clone`, `tart set` or VM
        supervisor running. They are ended first, so that none of them can write into the
        new VM or its runtime files later; then the VM is deleted, because `tart clone`
        would overwrite it silently, even while its `tart run` still runs.
        """
        left = await processes.find(self.vm_name, tart.path)
        if left:
            self._emit(
                f"Ending what an earlier run of this task left running for VM {self.vm_name}: "
                + ", ".join(_describe(p) for p in left),
                {"vm": self.vm_name},
            )
            survivors = await processes.end(left, FORCE_SECONDS)
            if survivors:
                raise TartTrioError(
                    f"processes of an earlier run of VM {self.vm_name} did not end: "
                    + ", ".join(f"pid {p.pid}" for p in survivors)
                )
        if await self._bundle_exists(tart):
            self._emit(
                f"Removing VM {self.vm_name} left over from an earlier run of this task",
                {"vm": self.vm_name},
            )
            await self._delete_vm()
            if await self._bundle_exists(tart):
                raise TartTrioError(
                    f"VM {self.vm_name} is left over from an earlier run of this task and "
                    f"could not be removed; remove it with `tart delete {self.vm_name}`"
                )
        for stale in STALE_RUNTIME_FILES:
            (self.runtime_dir / stale).unlink(missing_ok=True)

    async def _clone(self, tart: Tart) -> None:
        url = self.config.url
        if images.is_remote(url):
            await self._ensure_image(tart, url)
        self._check_fit(tart, url)
        self._cloned = True
        for attempt in range(1, CLONE_ATTEMPTS + 1):
            try:
                # Tart's clone reads every VM's config.json while `tart set` rewrites one
                # in place, and other commands sweep tart's tmp directory a clone stages
                # in: provisioning is serialised, and a clone that lost a race is retried.
                async with self.ctx.provision_lock, self.ctx.pulls.cloning(url):
                    with trio.fail_after(TART_CALL_SECONDS):
                        await tart.run(
                            "clone", url, self.vm_name, extra_env=self._clone_environment()
                        )
                break
            except TartCommandError as exc:
                if attempt == CLONE_ATTEMPTS or not _clone_race(exc):
                    raise
                log.info(
                    "tart clone lost a race with another tart command; retrying",
                    extra={"vm": self.vm_name, "error": str(exc)},
                )
                await self._delete_vm()
        self._user_notice()

    def _clone_environment(self) -> dict[str, str]:
        # Tart's automatic pruning would remove images the driver keeps (disk_reserve and
        # image_cache_budget manage the space instead)
        return {**self._credentials(), "TART_NO_AUTO_PRUNE": "1"}

    async def _ensure_image(self, tart: Tart, url: str) -> None:
        """The image in Tart's cache: joined from the pre-pull, pulled, or found there."""
        if self.ctx.pulls.prepulling(url):
            await self._pull(tart, url, join=True)
            return
        if not self.config.force_pull:
            with trio.fail_after(TART_CALL_SECONDS):
                if images.canonical(url) in await images.cached_names(tart):
                    return
        await self._pull(tart, url)

    def _check_fit(self, tart: Tart, url: str) -> None:
        """Before anything is cloned: the image's minimums, and room for the clone."""
        config = images.image_config(tart, url)
        if config is not None and config.get("os") == "darwin":
            self._check_minimums(url, config)
        source = images.cache_path(tart, url) if images.is_remote(url) else tart.vm_dir(url)
        cost = _diskspace.clone_cost(images.allocated_bytes(source))
        _diskspace.require(tart.home_dir, self.ctx.disk_reserve, cost, f"cloning {url}")

    def _check_minimums(self, url: str, config: dict[str, object]) -> None:
        """Tart refuses less memory or CPU than a macOS image's minimum (VMConfig.swift)."""
        memory_min = _int(config.get("memorySizeMin")) // (1024 * 1024)
        if self.task.memory_mb and self.task.memory_mb < memory_min:
            raise ConfigError(
                "resources.memory",
                f"{self.task.memory_mb} MB is less than the {memory_min} MB image {url} needs "
                f"(its memorySizeMin); give the task resources {{ memory = {memory_min} }} "
                "or more",
                scope="task resources",
            )
        cpu_min = _int(config.get("cpuCountMin"))
        cores = self.task.reserved_cores
        if cores and cores < cpu_min:
            raise ConfigError(
                "resources.cores",
                f"{cores} is less than the {cpu_min} CPU cores image {url} needs (its "
                f"cpuCountMin); give the task resources {{ cores = {cpu_min} }} or more, or "
                "only cpu (MHz) to keep the image's CPU count",
                scope="task resources",
            )

    def _user_notice(self) -> None:
        # emitted once the image is here, so a long pull cannot push it out of the task's
        # last ten events (all Nomad keeps)
        if self.task.user:
            self._emit(
                f"The task's user {self.task.user!r} is not used: tart runs as the plugin's "
                "tart_user, and commands in the VM run as ssh_user",
                {"vm": self.vm_name},
            )

    async def _bundle_exists(self, tart: Tart) -> bool:
        return await (trio.Path(tart.vm_dir(self.vm_name)) / "config.json").exists()

    async def _pull(self, tart: Tart, url: str, *, join: bool = False) -> None:
        """Download ``url`` (or wait for the pre-pull downloading it), with a few events.

        Nomad keeps a task's last ten events: progress becomes an event every two minutes
        (as Docker's driver does) and a log line every ten seconds.
        """
        joining = " (the pre-pull is downloading it)" if join else ""
        self._emit(f"Downloading image {url}{joining}", {"image": url})
        began = trio.current_time()
        throttle = ProgressThrottle(began)
        logged = began

        def progress(percent: int) -> None:
            nonlocal logged
            now = trio.current_time()
            if throttle.due(now):
                self._emit(
                    f"Downloading image {url}: {percent}%", {"image": url, "percent": str(percent)}
                )
            if now - logged >= PROGRESS_EVERY:
                logged = now
                log.info("downloading image", extra={"image": url, "percent": percent})

        def waiting() -> None:
            self._emit(
                f"Waiting for another download from {images.host_of(url)} to finish (Tart "
                "pulls one image per registry at a time)",
                {"image": url},
            )

        listener = PullListener(progress=progress, waiting=waiting)
        try:
            if join:
                await self.ctx.pulls.join_prepull(url, listener)
            else:
                await self.ctx.pulls.pull(
                    tart,
                    url,
                    self._credentials(),
                    timeout_seconds=self.ctx.pull_timeout,
                    inactivity_seconds=self.ctx.pull_inactivity,
                    listener=listener,
                    check_space=self._space_check(tart, url),
                )
        except _diskspace.NotEnoughSpace as exc:
            self._emit(f"Downloading image {url} failed: {exc}", {"image": url})
            raise
        except TartCommandError as exc:
            self._emit(f"Downloading image {url} failed: {exc.stderr or exc}", {"image": url})
            raise RecoverableError(f"pulling image {url} failed: {exc}") from exc
        took = trio.current_time() - began
        self._emit(f"Downloaded image {url} in {took:.0f}s", {"image": url})

    def _space_check(self, tart: Tart, url: str) -> Callable[[int], None]:
        home, reserve = tart.home_dir, self.ctx.disk_reserve

        def check(needed: int) -> None:
            _diskspace.require(home, reserve, needed, f"pulling {url}")

        return check

    async def _configure(self, tart: Tart) -> None:
        cpus = self.task.reserved_cores
        if not cpus:
            self._emit(
                "no reserved cores (resources.cores); the VM keeps its image's CPU count",
                {"vm": self.vm_name},
            )
        argv = tart_argv.set_argv(
            self.vm_name, cpus or None, self.task.memory_mb or None, self.config.disk_size
        )
        async with self.ctx.provision_lock:
            with trio.fail_after(TART_CALL_SECONDS):
                await tart.run(*argv)

    async def _check_macos_slots(self, tart: Tart) -> None:
        running = await vms.running_macos_vms(tart)
        if len(running) >= self.ctx.max_macos_vms:
            raise RecoverableError(
                f"this host already runs {len(running)} macOS VMs ({', '.join(running)}); "
                f"max_macos_vms is {self.ctx.max_macos_vms} (Apple allows two per host)"
            )

    async def _launch(self, tart: Tart) -> tuple[int, str | None]:
        task_dir = Path(self.task.alloc_dir) / self.task.name
        shares: list[tuple[str, str]] = []
        if self.config.command:
            shares = [("local", str(task_dir / "local")), ("alloc", str(task_dir.parent / "alloc"))]
        run = tart.argv(
            *tart_argv.run_argv(self.vm_name, self.config, str(task_dir / "secrets"), shares)
        )
        command = [
            *self.ctx.launch_prefix,
            sys.executable,
            "-m",
            "tart_trio._supervisor",
            "--status-file",
            str(self.runtime_dir / "status.json"),
            "--pid-file",
            str(self.runtime_dir / "tart-run.pid"),
            "--log-file",
            str(self.runtime_dir / "tart-run.log"),
            "--stderr-fifo",
            # With a command, stderr is the command's; tart run's output stays in its log.
            os.devnull if self.config.command else self.task.stderr_path or os.devnull,
            *processes.owner_argument(self.task.alloc_id, self.task.name),
            "--",
            *run,
        ]
        result = await trio.run_process(
            command,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            env=tart.env,
            start_new_session=True,
            check=False,
        )
        reported = result.stdout.split()
        if result.returncode != 0 or not reported or not reported[0].isdigit():
            why = result.stderr.decode(errors="replace").strip() or "it reported no pid"
            raise TartTrioError(f"cannot start the VM supervisor: {why}")
        pid = int(reported[0])
        self.supervisor = (pid, _proc.start_time(pid))
        return self.supervisor

    async def _wait_reachable(
        self, tart: Tart, supervisor_pid: int, token: str | None
    ) -> tuple[str, str]:
        outcome: list[tuple[str, str]] = []

        async def watch_early_exit(scope: trio.CancelScope) -> None:
            await _proc.wait_exit(supervisor_pid, token)
            scope.cancel()

        async def discover(scope: trio.CancelScope) -> None:
            ip = await self._discover_ip(tart)
            address = ssh.GuestAddress(
                host=ip, user=self.config.ssh_user, password=self.config.ssh_password
            )
            outcome.append((ip, await ssh.wait_for_guest(address)))
            scope.cancel()

        with single_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_early_exit, nursery.cancel_scope)
                nursery.start_soon(discover, nursery.cancel_scope)
        if outcome:
            return outcome[0]
        error = self._early_exit_error()
        if self._darwin and hit_vm_limit(str(error)):
            await self._note_vm_limit(tart)
        raise error

    async def _note_vm_limit(self, tart: Tart) -> None:
        """Tart's VM limit with fewer macOS VMs running than it allows: slots leaked."""
        try:
            running = await vms.running_macos_vms(tart)
        except (TartTrioError, trio.TooSlowError, ValueError):
            return
        leak = self.ctx.slots.limit_hit(len(running), self.ctx.max_macos_vms)
        if leak is not None:
            self._emit(leak.reason(), {"vm": self.vm_name})

    async def _discover_ip(self, tart: Tart) -> str:
        """``tart ip --wait``; bridged VMs are not in the DHCP leases, so ask ARP."""
        resolver = ["--resolver", "arp"] if network_mode(self.config.network) == "bridged" else []
        while True:
            try:
                out = await tart.run("ip", self.vm_name, "--wait", "30", *resolver)
            except TartCommandError:
                await trio.sleep(1)
                continue
            return out.strip()

    def _early_exit_error(self) -> TartTrioError:
        status = read_status(self.runtime_dir / "status.json")
        output = _tail(self.runtime_dir / "tart-run.log")
        code = status.exit_code if status is not None else -1
        message = f"`tart run {self.vm_name}` exited with code {code} before the VM was up"
        if output:
            message += f": {output}"
        if hit_vm_limit(output):
            return RecoverableError(message + " (Apple allows two macOS VMs per host)")
        if self._darwin and FAILED_TO_START in output:
            message += f" ({MACOS_START_HINT})"
        return TartTrioError(message)

    async def _rollback(self) -> None:
        """Undo a partial start: no VM, supervisor or bundle may be left behind."""
        with trio.move_on_after(FORCE_SECONDS + TART_CALL_SECONDS):
            await self._force_down()
            if self._cloned:
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
                        pump_logs, state, self.config.log_command, self._emit, stdout
                    )
                await _proc.wait_exit(state.supervisor_pid, state.supervisor_token)
                nursery.cancel_scope.cancel()
        finally:
            stdout.close()
            stderr.close()
        self.finish(self.vm_result(read_status(Path(state.status_file))))

    def vm_result(self, status: ExitResult | None) -> ExitResult:
        """The task's result once its VM has ended with ``status`` (None: no status)."""
        if self.state is not None and self.state.command_job:
            known = self._command_result or _read_command_result(self.runtime_dir)
            if known is not None:
                return known
            output = _tail(self.runtime_dir / "tart-run.log", 300)
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

    def _report(self, message: str) -> None:
        self._emit(message, {"vm": self.vm_name})

    def _guest_address(self, state: DriverState) -> ssh.GuestAddress:
        return ssh.GuestAddress(
            host=state.ip,
            user=self.config.ssh_user,
            password=self.config.ssh_password,
            host_key=state.host_key,
        )

    async def _follow_command(self, state: DriverState, stdout: Sink, stderr: Sink) -> None:
        """Follow the command to its end: output into the sinks, then the task's result,
        then the VM is powered off (DestroyTask deletes it)."""
        watch = command.CommandWatch(
            self._guest_address(state),
            state.command_job,
            command.offsets_path(state.runtime_dir),
            stdout,
            stderr,
            whole_lines=self.config.streams_guest_logs,
        )
        limit = self.config.timeout_seconds
        deadline = math.inf
        if limit:
            wall = state.command_started + limit + command.TIMEOUT_GRACE + TIMEOUT_BACKSTOP
            deadline = trio.current_time() + max(wall - time.time(), 0.0)
        failed: list[ssh.HostKeyMismatch] = []

        async def follow() -> None:
            try:
                await watch.run()
            except ssh.HostKeyMismatch as exc:
                failed.append(exc)
                watch.ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)  # closes its SSH sessions after `ended`
            with trio.move_on_at(deadline) as backstop:
                await watch.ended.wait()
            if backstop.cancelled_caught:
                nursery.cancel_scope.cancel()
                result = ExitResult(
                    exit_code=1,
                    err=f"the command did not end within its timeout of {self.config.timeout} "
                    "and the guest did not report it; the VM is powered off",
                )
            elif failed:
                result = ExitResult(exit_code=1, err=f"the command's output stopped: {failed[0]}")
            else:
                assert watch.outcome is not None
                result = self._command_outcome(watch.outcome, watch.reconnected)
            self._command_result = result
            _write_command_result(self.runtime_dir, result)
            await stdout.drained()
            await stderr.drained()
            self.finish(result)
        await self._power_off()

    def _command_outcome(self, outcome: command.Outcome, reconnected: bool) -> ExitResult:
        if outcome.how == "exited":
            code = outcome.exit_code
            signum = code - 128 if 128 < code <= 128 + 64 else 0
            err = ""
            if outcome.timed_out:
                err = (
                    f"the command did not finish within its timeout of {self.config.timeout} "
                    "and was killed"
                )
            return ExitResult(exit_code=code, signal=signum, err=err)
        if outcome.timed_out:
            return ExitResult(
                exit_code=128 + 9,
                signal=9,
                err=f"the command did not finish within its timeout of {self.config.timeout} "
                "and was killed (SIGKILL)",
            )
        if outcome.how == "lost" and self._sent_kill:
            return ExitResult(exit_code=128 + 9, signal=9)  # as asked: SIGKILL ends the runner too
        why = command.describe(outcome)
        if reconnected:
            why += " (its SSH connection had dropped)"
        return ExitResult(exit_code=1, err=why)

    async def _power_off(self, grace: float = POWER_OFF_GRACE) -> None:
        """Power the VM off (`tart stop`: a hard stop) and wait until it is down."""
        if self.supervisor is None:
            return
        pid, token = self.supervisor
        if not _proc.alive(pid, token):
            return
        await self._tart_stop(grace)
        with trio.move_on_after(grace + FORCE_SECONDS):
            await _proc.wait_exit(pid, token)
        if _proc.alive(pid, token):
            await self._force_down()

    async def _signal_command(self, name: str) -> bool:
        """Send signal ``name`` (``kill -s`` form) to the command's process group."""
        if self.state is None:
            return False
        self._sent_kill = self._sent_kill or name == "KILL"
        with trio.move_on_after(SHUTDOWN_SSH_SECONDS):
            try:
                async with ssh.open_guest(self._guest_address(self.state)) as guest:
                    return await command.send_signal(guest, self.state.command_job, name)
            except ssh.GuestError as exc:
                log.info(
                    "signalling the command over SSH failed",
                    extra={"vm": self.vm_name, "error": str(exc)},
                )
        return False

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

    def adopt(self, state: DriverState) -> None:
        """Take over a VM an earlier plugin process started (recovery)."""
        self.state = state
        self.phase = "running"
        self.started_at = datetime.fromtimestamp(state.started_at, UTC)
        self.runtime_dir = Path(state.runtime_dir)
        self.supervisor = (state.supervisor_pid, state.supervisor_token)
        self._cloned = True

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
                bare = command.signal_name(name)
            except ValueError as exc:
                raise TartTrioError(str(exc)) from None
            if not await self._signal_command(bare):
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
                name = command.signal_name(signal_name)
            except ValueError:
                log.info("unknown kill_signal; using SIGINT", extra={"signal": signal_name})
                name = "INT"
            with trio.move_on_after(max(budget, 0.0)):
                if await self._signal_command(name):
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
        await tart_stop(self.ctx.tart, self.vm_name, grace)

    async def _force_down(self) -> None:
        """SIGTERM the supervisor (it SIGKILLs ``tart run``) and wait for it to end."""
        if self.supervisor is None:
            return
        pid, token = self.supervisor
        _proc.signal_process(pid, token, signal.SIGTERM)
        with trio.move_on_after(FORCE_SECONDS):
            await _proc.wait_exit(pid, token)

    async def _delete_vm(self) -> None:
        await delete_vm(self.ctx.tart, self.vm_name)

    async def destroy(self) -> None:
        """Stop if needed, delete the VM bundle and the runtime files."""
        if self.phase != "exited":
            await self.stop(0, "SIGKILL")
        self._scope.cancel()
        await self._power_off(0)  # a task whose command ended may still be powering off
        await self._delete_vm()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


async def tart_stop(tart: Tart, vm_name: str, grace: float) -> None:
    """``tart stop`` (a power-off after ``grace`` seconds); a VM that is not running is fine."""
    with trio.move_on_after(TART_CALL_SECONDS):
        try:
            await tart.run("stop", vm_name, "--timeout", str(max(int(grace), 0)))
        except TartCommandError as exc:
            log.debug("tart stop", extra={"vm": vm_name, "error": str(exc)})


async def delete_vm(tart: Tart, vm_name: str) -> None:
    """``tart delete``, powering the VM off first if it runs; a missing VM is fine."""
    for _ in range(3):
        try:
            with trio.fail_after(TART_CALL_SECONDS):
                await tart.run("delete", vm_name)
            return
        except TartCommandError as exc:
            if exc.returncode == 2:  # does not exist
                return
            await tart_stop(tart, vm_name, 0)
        except trio.TooSlowError:
            return


def hit_vm_limit(output: str) -> bool:
    """Whether ``tart run``'s output is Apple's limit on macOS VMs, in any Tart version."""
    return versions.vm_limit_reached(output)


def _describe(process: processes.VMProcess) -> str:
    """``tart clone (pid 123)``, ``the VM supervisor (pid 124)``."""
    if process.owner is not None:
        return f"the VM supervisor (pid {process.pid})"
    words = [os.path.basename(a) for a in process.argv]
    at = words.index("tart") if "tart" in words else 0
    return f"{' '.join(words[at : at + 2])} (pid {process.pid})"


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _clone_race(exc: TartCommandError) -> bool:
    """Failures of `tart clone` caused by a concurrent tart command, not by the image."""
    return "No such file or directory" in exc.stderr or "dataCorrupted" in exc.stderr


def read_status(path: Path) -> ExitResult | None:
    """The exit status the supervisor wrote (only a file of our own counts)."""
    try:
        fd = open_own_file(str(path), os.O_RDONLY)
        with os.fdopen(fd, "rb") as status:
            raw = json.loads(status.read())
    except (OSError, ValueError):
        return None
    return ExitResult(exit_code=int(raw.get("exit_code", 0)), signal=int(raw.get("signal", 0)))


def _write_command_result(runtime_dir: Path, result: ExitResult) -> None:
    """Keep the command's result beside the VM's status (recovery may need it later)."""
    try:
        fd = open_own_file(str(runtime_dir / "command.result"), os.O_WRONLY | os.O_CREAT)
    except OSError:
        return
    with os.fdopen(fd, "wb") as out:
        out.truncate()
        out.write(msgspec.json.encode(result))


def _read_command_result(runtime_dir: Path) -> ExitResult | None:
    try:
        fd = open_own_file(str(runtime_dir / "command.result"), os.O_RDONLY)
        with os.fdopen(fd, "rb") as raw:
            return msgspec.json.decode(raw.read(), type=ExitResult)
    except (OSError, msgspec.DecodeError):
        return None


def _tail(path: Path, limit: int = 600) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " ".join(text[-limit:].split())
