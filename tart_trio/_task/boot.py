"""From a configured clone to a guest that answers SSH.

``Boot`` starts the VM supervisor (``nomad-driver-tart supervise``, which runs ``tart run``),
waits until the guest's address is known and its SSH answers, tells why when ``tart run``
ends first (Apple's VM limit, a macOS guest outside its login session), and grows a macOS
guest's disk into what ``disk_size`` added. The readers of what the supervisor leaves in the
runtime directory are here too.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec
import trio

from tart_trio._config.task import TaskConfig, command_shares, network_mode
from tart_trio._errors import RecoverableError, TartTrioError
from tart_trio._groups import single_errors
from tart_trio._guest import disk, ssh
from tart_trio._host import helpers, ports, proc
from tart_trio._host.safefs import open_own_file
from tart_trio._model import ExitResult, NomadTask
from tart_trio._tart import argv as tart_argv
from tart_trio._tart import processes, versions, vms
from tart_trio._tart.cli import Tart, TartCommandError
from tart_trio._task import network
from tart_trio._task.context import TaskContext

FAILED_TO_START: Final = "The virtual machine failed to start."
MACOS_START_HINT: Final = (
    "macOS 15.2 and later guests start only in the GUI login session of the user that runs "
    "tart, or with its login keychain unlocked: see driver.tart.login_session and the "
    "plugin option run_in_login_session"
)
#: How long growing a macOS guest's APFS container may take (repairDisk, resizeContainer).
GROW_DISK_SECONDS: Final = 300.0


class Boot:
    """Launch a task's VM and wait for its guest; ``darwin`` once the guest's OS is known."""

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
        self.darwin = False

    async def grow_guest_disk(self, address: ssh.GuestAddress) -> None:
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

    async def check_macos_slots(self, tart: Tart) -> None:
        running = await vms.running_macos_vms(tart)
        if len(running) >= self.ctx.max_macos_vms:
            raise RecoverableError(
                f"this host already runs {len(running)} macOS VMs ({', '.join(running)}); "
                f"max_macos_vms is {self.ctx.max_macos_vms} (Apple allows two per host)"
            )

    async def launch(
        self, tart: Tart, forwards: tuple[ports.Forward, ...] = ()
    ) -> tuple[int, str | None]:
        """Start the supervisor with ``tart run`` (and the port forwards); its pid and
        start token."""
        shares: list[tuple[str, str]] = []
        if self.config.command:
            shares = command_shares(self.task.alloc_dir, self.task.name)
        secrets = str(Path(self.task.alloc_dir) / self.task.name / "secrets")
        run = tart_argv.run_argv(self.vm_name, self.config, secrets, shares)
        return await self.launch_run(tart, run, forwards)

    async def launch_run(
        self, tart: Tart, run: list[str], forwards: tuple[ports.Forward, ...] = ()
    ) -> tuple[int, str | None]:
        """Start the supervisor with these ``tart run`` arguments."""
        # With a command, stderr is the command's; tart run's output stays in its log.
        stderr = os.devnull if self.config.command else self.task.stderr_path or os.devnull
        return await start_supervisor(
            tart,
            self.ctx.launch_prefix,
            self.runtime_dir,
            run,
            stderr_path=stderr,
            extra=[
                *processes.owner_argument(self.task.alloc_id, self.task.name),
                *network.supervisor_arguments(self.runtime_dir, forwards),
            ],
        )

    async def wait_reachable(
        self, tart: Tart, supervisor_pid: int, token: str | None
    ) -> tuple[str, str]:
        resolver = ["--resolver", "arp"] if network_mode(self.config.network) == "bridged" else []
        address = ssh.GuestAddress(
            host="", user=self.config.ssh_user, password=self.config.ssh_password
        )
        reached = await reach_vm(tart, self.vm_name, (supervisor_pid, token), address, resolver)
        if reached is not None:
            return reached
        error = self._early_exit_error()
        if self.darwin and hit_vm_limit(str(error)):
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

    def _early_exit_error(self) -> TartTrioError:
        status = read_status(self.runtime_dir / "status.json")
        output = tail(self.runtime_dir / "tart-run.log")
        code = status.exit_code if status is not None else -1
        message = f"`tart run {self.vm_name}` exited with code {code} before the VM was up"
        if output:
            message += f": {output}"
        if hit_vm_limit(output):
            return RecoverableError(message + " (Apple allows two macOS VMs per host)")
        if self.darwin and FAILED_TO_START in output:
            message += f" ({MACOS_START_HINT})"
        return TartTrioError(message)


async def reach_vm(
    tart: Tart,
    vm_name: str,
    supervisor: tuple[int, str | None],
    address: ssh.GuestAddress,
    resolver: list[str],
) -> tuple[str, str] | None:
    """The VM's address (``tart ip``, ``resolver`` arguments added) and host key once its
    guest accepts ``address``'s login; None when the supervisor (``tart run``) ends first.

    ``tart ip --wait`` fails while the guest has no address yet and is asked again.
    """
    outcome: list[tuple[str, str]] = []

    async def watch_early_exit(scope: trio.CancelScope) -> None:
        await proc.wait_exit(*supervisor)
        scope.cancel()

    async def discover(scope: trio.CancelScope) -> None:
        while True:
            try:
                ip = (await tart.run("ip", vm_name, "--wait", "30", *resolver)).strip()
                break
            except TartCommandError:
                await trio.sleep(1)
        login = msgspec.structs.replace(address, host=ip)
        outcome.append((ip, await ssh.wait_for_guest(login)))
        scope.cancel()

    with single_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_early_exit, nursery.cancel_scope)
            nursery.start_soon(discover, nursery.cancel_scope)
    return outcome[0] if outcome else None


async def start_supervisor(
    tart: Tart,
    launch_prefix: tuple[str, ...],
    runtime_dir: Path,
    run: list[str],
    *,
    stderr_path: str = os.devnull,
    extra: list[str] | None = None,
) -> tuple[int, str | None]:
    """Start a VM supervisor (``nomad-driver-tart supervise``) that runs ``tart run`` with
    these arguments; its pid and start token once it has detached."""
    command = [
        *launch_prefix,
        *helpers.command(
            helpers.SUPERVISE,
            "--status-file",
            str(runtime_dir / "status.json"),
            "--pid-file",
            str(runtime_dir / "tart-run.pid"),
            "--log-file",
            str(runtime_dir / "tart-run.log"),
            "--stderr-fifo",
            stderr_path,
            *(extra or []),
            "--",
            *tart.argv(*run),
        ),
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
        if network.port_unavailable(result.returncode):
            raise RecoverableError(f"cannot start the VM supervisor: {why}")
        raise TartTrioError(f"cannot start the VM supervisor: {why}")
    pid = int(reported[0])
    return pid, proc.start_time(pid)


def hit_vm_limit(output: str) -> bool:
    """Whether ``tart run``'s output is Apple's limit on macOS VMs, in any Tart version."""
    return versions.vm_limit_reached(output)


def read_status(path: Path) -> ExitResult | None:
    """The exit status the supervisor wrote (only a file of our own counts)."""
    try:
        fd = open_own_file(str(path), os.O_RDONLY)
        with os.fdopen(fd, "rb") as status:
            raw = json.loads(status.read())
    except (OSError, ValueError):
        return None
    return ExitResult(exit_code=int(raw.get("exit_code", 0)), signal=int(raw.get("signal", 0)))


def tail(path: Path, limit: int = 600) -> str:
    """The end of a log file as one line (what ``tart run`` said last)."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " ".join(text[-limit:].split())
