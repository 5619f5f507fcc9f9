"""A task's VM bundle: from the image in Tart's cache to a clone configured for the task.

Before anything is cloned it ends and removes what an earlier run of the task left; it
brings the image (joining the pre-pull, pulling, or finding it cached, with few task
events), checks the image's minimum resources and the disk reserve, clones under the
provisioning lock and sets CPU, memory, disk size and a fresh MAC address.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from tart_trio._config.task import TaskConfig
from tart_trio._errors import ConfigError, RecoverableError, TartTrioError
from tart_trio._host import diskspace
from tart_trio._images.pulls import ProgressThrottle, PullListener
from tart_trio._model import NomadTask
from tart_trio._tart import argv as tart_argv
from tart_trio._tart import images, processes, vms
from tart_trio._tart.cli import Tart, TartCommandError
from tart_trio._task.context import TaskContext

log = logging.getLogger("task")

#: How long ending an earlier run's processes may take (SIGTERM, then SIGKILL).
END_SECONDS: Final = 15.0
PROGRESS_EVERY: Final = 10.0
CLONE_ATTEMPTS: Final = 3
#: Runtime files an earlier run of the task may have left (a new run starts without them).
STALE_RUNTIME_FILES: Final = (
    "status.json",
    "tart-run.pid",
    "tart-run.log",
    "log.cursor",
    "command.offsets",
    "command.result",
)


class Provisioner:
    """Makes one task's VM bundle; ``cloned`` says whether a clone may exist to roll back."""

    def __init__(
        self,
        task: NomadTask,
        config: TaskConfig,
        vm_name: str,
        ctx: TaskContext,
        emit: Callable[[str, dict[str, str]], None],
        runtime_dir: Path,
    ) -> None:
        self.task = task
        self.config = config
        self.vm_name = vm_name
        self.ctx = ctx
        self._emit = emit
        self.runtime_dir = runtime_dir
        self.cloned = False

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

    async def clear_earlier_attempt(self, tart: Tart) -> None:
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
            survivors = await processes.end(left, END_SECONDS)
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
            await vms.delete_vm(tart, self.vm_name)
            if await self._bundle_exists(tart):
                raise TartTrioError(
                    f"VM {self.vm_name} is left over from an earlier run of this task and "
                    f"could not be removed; remove it with `tart delete {self.vm_name}`"
                )
        for stale in STALE_RUNTIME_FILES:
            (self.runtime_dir / stale).unlink(missing_ok=True)

    async def clone(self, tart: Tart) -> None:
        url = self.config.url
        if images.is_remote(url):
            await self.ensure_image(tart, url)
        self._check_fit(tart, url)
        self.cloned = True
        for attempt in range(1, CLONE_ATTEMPTS + 1):
            try:
                # Tart's clone reads every VM's config.json while `tart set` rewrites one
                # in place, and other commands sweep tart's tmp directory a clone stages
                # in: provisioning is serialised, and a clone that lost a race is retried.
                async with self.ctx.provision_lock, self.ctx.pulls.cloning(url):
                    with trio.fail_after(vms.TART_CALL_SECONDS):
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
                await vms.delete_vm(tart, self.vm_name)
        self._user_notice()

    def _clone_environment(self) -> dict[str, str]:
        # Tart's automatic pruning would remove images the driver keeps (disk_reserve and
        # image_cache_budget manage the space instead)
        return {**self._credentials(), "TART_NO_AUTO_PRUNE": "1"}

    async def ensure_image(self, tart: Tart, url: str) -> None:
        """The image in Tart's cache: joined from the pre-pull, pulled, or found there."""
        if self.ctx.pulls.prepulling(url):
            await self._pull(tart, url, join=True)
            return
        if not self.config.force_pull:
            with trio.fail_after(vms.TART_CALL_SECONDS):
                if images.canonical(url) in await images.cached_names(tart):
                    return
        await self._pull(tart, url)

    def _check_fit(self, tart: Tart, url: str) -> None:
        """Before anything is cloned: the image's minimums, and room for the clone."""
        config = images.image_config(tart, url)
        if config is not None and config.get("os") == "darwin":
            self._check_minimums(url, config)
        source = images.cache_path(tart, url) if images.is_remote(url) else tart.vm_dir(url)
        cost = diskspace.clone_cost(images.allocated_bytes(source))
        diskspace.require(tart.home_dir, self.ctx.disk_reserve, cost, f"cloning {url}")

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
        except diskspace.NotEnoughSpace as exc:
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
            diskspace.require(home, reserve, needed, f"pulling {url}")

        return check

    async def configure(self, tart: Tart) -> None:
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
            with trio.fail_after(vms.TART_CALL_SECONDS):
                await tart.run(*argv)


def _describe(process: processes.VMProcess) -> str:
    """``tart clone (pid 123)``, ``the VM supervisor (pid 124)``."""
    if process.owner is not None:
        return f"the VM supervisor (pid {process.pid})"
    words = [Path(a).name for a in process.argv]
    at = words.index("tart") if "tart" in words else 0
    return f"{' '.join(words[at : at + 2])} (pid {process.pid})"


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _clone_race(exc: TartCommandError) -> bool:
    """Failures of `tart clone` caused by a concurrent tart command, not by the image."""
    return "No such file or directory" in exc.stderr or "dataCorrupted" in exc.stderr
