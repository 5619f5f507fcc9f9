"""Golden VMs of a warm pool: building one, resuming a clone of it, and the self-test.

A golden is a clone of the pool's image, set to the pool's cores and memory and a MAC of
its own, booted once with ``tart run --suspendable`` and the slot's share links
(``warmlayout``), then suspended: ``tart suspend``, and ``tart run`` exits 0 once
``state.vzvmsave`` is written. It is never run again; tasks (and the self-test) run clones
of it, with the golden's ``tart run`` arguments byte for byte but the VM's name, and no
``tart set`` (a changed configuration is refused at restore). ``resume`` is the one
procedure both use, and every doubt it has is a :class:`WarmFailure` with the reason: the
caller powers the clone off and boots cold.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec
import trio

from tart_trio._config.durations import parse_duration
from tart_trio._config.plugin import WarmPool
from tart_trio._errors import TartTrioError
from tart_trio._groups import single_errors
from tart_trio._guest import ssh
from tart_trio._host import proc
from tart_trio._host.safefs import make_private_dir
from tart_trio._images.pulls import PullListener
from tart_trio._tart import images, processes, vms
from tart_trio._tart.cli import Tart, TartCommandError
from tart_trio._task import warmlayout
from tart_trio._task.boot import hit_vm_limit, reach_vm, read_status, start_supervisor, tail
from tart_trio._task.context import TaskContext

log = logging.getLogger("warm")

SUSPEND_SECONDS: Final = 300.0
STATE_FILE: Final = "state.vzvmsave"
RESTORING: Final = "restoring VM state from a snapshot"
RESUMED: Final = "resuming VM"
MAC_RESET: Final = "Resetting VM to assign a new MAC address"
#: Checks of a resumed guest whose share shows no nonce at all (it may not be mounted yet).
CHECK_ATTEMPTS: Final = 3
#: What the mount-and-check command may print (the guest is hostile: bounded, parsed).
CHECK_OUTPUT_MAX: Final = 4096


class NoMacOSSlot(TartTrioError):
    """A golden could not start because Apple's limit of macOS VMs is reached (by VMs of
    any owner): the build waits for a free slot, it has not failed."""


class _Dropped(Exception):
    """The SSH connection to a resumed guest failed under a check (it is tried again)."""


class WarmFailure(TartTrioError):
    """A warm start or a golden cannot be trusted; ``reason`` says why, for an event."""

    def __init__(self, reason: str, *, golden_at_fault: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The golden itself failed (a refused restore): it is built again.
        self.golden_at_fault = golden_at_fault


@dataclass(frozen=True)
class HostIdentity:
    """What every golden of this host depends on besides its pool."""

    tart_path: str
    tart_version: str
    os_build: str
    tart_user: str
    tart_home: str
    login_session: bool


def pool_key(pool: WarmPool) -> str:
    """A digest of what a pool's goldens are made of (``max_age`` and ``slots`` aside)."""
    shape = msgspec.json.encode(
        [pool.name, pool.image, pool.cores, pool.memory, pool.network, pool.ssh_user]
    )
    return hashlib.sha256(shape).hexdigest()[:16]


def budget(pool: WarmPool) -> float:
    """From ``tart run`` of a clone until it answers, mounted and checked (never taken
    from ``boot_timeout``)."""
    return _seconds(pool.resume_timeout)


def network_args(pool: WarmPool) -> list[str]:
    return ["--net-softnet"] if pool.network == "softnet" else []


def stale_reason(
    record: warmlayout.GoldenRecord, pool: WarmPool, host: HostIdentity, digest: str, now: float
) -> str:
    """Why a golden no longer serves its pool ("" while it does)."""
    checks = [
        (record.pool_key != pool_key(pool), "the pool's configuration changed"),
        (record.tart_path != host.tart_path, "the tart executable changed"),
        (record.tart_version != host.tart_version, "Tart's version changed"),
        (record.os_build != host.os_build, "the host's OS build changed"),
        (record.tart_user != host.tart_user, "tart_user changed"),
        (record.tart_home != host.tart_home, "tart_home changed"),
        (record.login_session != host.login_session, "run_in_login_session changed"),
        (bool(digest) and record.digest != digest, "the image's digest changed"),
        (now - record.built_at > _seconds(pool.max_age), f"it is older than {pool.max_age}"),
    ]
    return next((why for stale, why in checks if stale), "")


def _seconds(text: str) -> float:
    return parse_duration(text)


def image_digest(tart: Tart, url: str) -> str:
    """The digest a cached tag points at ("" when the image is not cached)."""
    path = images.cache_path(tart, url)
    if not os.path.exists(path):
        return ""
    name = os.path.basename(os.path.realpath(path))
    return name if name.startswith("sha256:") else ""


def state_file(tart: Tart, vm: str) -> Path:
    return Path(tart.home_dir) / "vms" / vm / STATE_FILE


def clone_run(record: warmlayout.GoldenRecord, vm: str) -> list[str]:
    """The golden's ``tart run`` arguments for its clone ``vm``: only the name differs."""
    run = list(record.run)
    run[1] = vm
    return run


async def _ensure_image(ctx: TaskContext, pool: WarmPool) -> None:
    tart = ctx.tart
    with trio.fail_after(vms.TART_CALL_SECONDS):
        if images.canonical(pool.image) in await images.cached_names(tart):
            return
    await ctx.pulls.pull(
        tart,
        pool.image,
        {},
        timeout_seconds=ctx.pull_timeout,
        inactivity_seconds=ctx.pull_inactivity,
        listener=PullListener(progress=lambda _percent: None),
    )


async def remove_vm(tart: Tart, vm: str) -> None:
    """End whatever runs the VM and delete it (shielded: also on the way out)."""
    with trio.CancelScope(shield=True), trio.move_on_after(60):
        left = await processes.find(vm, tart.path)
        if left:
            await processes.end(left, 10.0)
        try:
            await vms.delete_vm(tart, vm)
        except (TartTrioError, OSError) as exc:
            log.warning("could not delete a warm VM", extra={"vm": vm, "error": str(exc)})


async def _wait_guest(
    tart: Tart, vm: str, pool: WarmPool, pid: int, token: str | None, log_file: Path
) -> tuple[str, str]:
    """The golden's address and host key once it answers SSH (its supervisor must live)."""
    address = ssh.GuestAddress(host="", user=pool.ssh_user, password=pool.ssh_password)
    reached = await reach_vm(tart, vm, (pid, token), address, [])
    if reached is not None:
        return reached
    said = last_line(log_file)
    if hit_vm_limit(said):
        raise NoMacOSSlot(f"`tart run {vm}` found no free macOS VM slot: {said}")
    raise TartTrioError(f"`tart run {vm}` ended before the golden was up: {said}")


async def build(
    slot: warmlayout.Slot, pool: WarmPool, host: HostIdentity, ctx: TaskContext
) -> warmlayout.GoldenRecord:
    """Build, boot and suspend a golden for the slot; its record (not yet self-tested)."""
    began = time.monotonic()
    tart = ctx.tart
    await _ensure_image(ctx, pool)
    digest = image_digest(tart, pool.image)
    vm = slot.golden_name()
    warmlayout.prepare(slot)
    warmlayout.reset(slot)
    make_private_dir(str(slot.runtime))
    for stale in ("status.json", "tart-run.pid", "tart-run.log"):
        (slot.runtime / stale).unlink(missing_ok=True)
    try:
        async with ctx.provision_lock, ctx.pulls.cloning(pool.image):
            with trio.fail_after(vms.TART_CALL_SECONDS):
                await tart.run("clone", pool.image, vm, extra_env={"TART_NO_AUTO_PRUNE": "1"})
            with trio.fail_after(vms.TART_CALL_SECONDS):
                await tart.run(
                    "set",
                    vm,
                    "--random-mac",
                    "--cpu",
                    str(pool.cores),
                    "--memory",
                    str(pool.memory),
                )
        run = ["run", vm, "--no-graphics", "--suspendable", *warmlayout.run_dirs(slot)]
        run += network_args(pool)
        async with ctx.launch_lock:
            running = await vms.running_macos_vms(tart)
            if len(running) >= ctx.max_macos_vms:
                raise NoMacOSSlot("no macOS VM slot is free for a golden build")
            pid, token = await start_supervisor(tart, ctx.launch_prefix, slot.runtime, run)
        with trio.fail_after(ctx.boot_timeout):
            ip, host_key = await _wait_guest(
                tart, vm, pool, pid, token, slot.runtime / "tart-run.log"
            )
        suspended_at = time.monotonic()
        await tart.run("suspend", vm)
        with trio.fail_after(SUSPEND_SECONDS):
            await proc.wait_exit(pid, token)
        status = read_status(slot.runtime / "status.json")
        if status is None or status.exit_code != 0 or status.signal:
            raise TartTrioError(
                f"`tart suspend {vm}` did not save the VM: {tail(slot.runtime / 'tart-run.log')}"
            )
        saved = state_file(tart, vm)
        if not saved.exists():
            raise TartTrioError(f"`tart suspend {vm}` left no {STATE_FILE}")
        now = time.monotonic()
        return warmlayout.GoldenRecord(
            vm=vm,
            pool_key=pool_key(pool),
            image=pool.image,
            digest=digest,
            tart_path=host.tart_path,
            tart_version=host.tart_version,
            os_build=host.os_build,
            tart_user=host.tart_user,
            tart_home=host.tart_home,
            login_session=host.login_session,
            run=tuple(run),
            ip=ip,
            host_key=host_key,
            built_at=time.time(),
            build_seconds=now - began,
            suspend_seconds=now - suspended_at,
            state_bytes=saved.stat().st_size,
        )
    except BaseException:
        await remove_vm(tart, vm)
        raise


@dataclass
class Resumed:
    """A resumed clone that answers, with the task's shares mounted; the phases' times."""

    ip: str
    host_key: str
    shares_root: str
    restore_seconds: float
    #: The one SSH command after the resume: mount, nonce, clock.
    check_seconds: float
    clock_step: float | None


#: After a resume, in one SSH command: mount the warm tag, read the nonce back, and step
#: the clock to the host's time given as $1 (the password for sudo comes on stdin).
_CHECK: Final = (
    'm="$HOME/{mount}"; mkdir -p "$m" && mount_virtiofs {tag} "$m" >/dev/null 2>&1; '
    'printf "home %s\\n" "$HOME"; printf "nonce "; head -c 64 "$m/probe/{nonce_file}"; echo; '
    "IFS= read -r pw; before=$(date +%s); "
    "if printf '%s\\n' \"$pw\" | sudo -S -p '' date -u -f %s \"$1\" >/dev/null 2>&1; "
    'then printf "clock %s\\n" "$before"; fi'
)


async def _reach(tart: Tart, vm: str, address: ssh.GuestAddress, deadline: float) -> ssh.Guest:
    """SSH to a resumed clone with the golden's host key: at the golden's address first
    (the lease its MAC holds), else where ``tart ip --resolver arp`` finds it (a golden
    suspended past its lease, or its address taken meanwhile: another VM answers there)."""
    first = max(0.5, (deadline - time.monotonic()) / 3)
    try:
        return await ssh.reach_guest(address, first, first_delay=0.05, max_delay=0.25)
    except ssh.GuestError as exc:
        if ssh.login_refused(exc):
            raise
        missed = exc
    try:
        found = (await tart.run("ip", vm, "--resolver", "arp", "--wait", "2")).strip()
    except TartCommandError:
        found = ""
    if not found or found == address.host:
        raise missed
    left = max(0.5, deadline - time.monotonic())
    moved = msgspec.structs.replace(address, host=found)
    return await ssh.reach_guest(moved, left, first_delay=0.05, max_delay=0.25)


async def resume(
    tart: Tart,
    vm: str,
    runtime_dir: Path,
    supervisor: tuple[int, str | None],
    record: warmlayout.GoldenRecord,
    user: str,
    password: str,
    nonce: str,
    within: float,
) -> Resumed:
    """Wait for a resumed clone: restored (not booted), SSH at the golden's address with
    its host key, the warm tag mounted and the nonce read back, the clock stepped; all
    within ``within`` seconds (the caller's budget)."""
    pid, token = supervisor
    began = time.monotonic()
    log_file = runtime_dir / "tart-run.log"
    address = ssh.GuestAddress(
        host=record.ip, user=user, password=password, host_key=record.host_key
    )
    reached: list[ssh.Guest] = []

    def said(text: str) -> bool:
        try:
            return text in log_file.read_text(errors="replace")
        except OSError:
            return False

    async def watch(scope: trio.CancelScope) -> None:
        await proc.wait_exit(pid, token)
        scope.cancel()

    async def reach(scope: trio.CancelScope) -> None:
        while not said(RESUMED):
            if said(MAC_RESET):
                scope.cancel()
                return
            await trio.sleep(0.02)  # tart run's log: a file another process writes
        reached.append(await _reach(tart, vm, address, began + within))
        scope.cancel()

    try:
        with single_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, nursery.cancel_scope)
                nursery.start_soon(reach, nursery.cancel_scope)
    except ssh.HostKeyMismatch:
        raise WarmFailure("the resumed guest's host key is not the golden's") from None
    except ssh.GuestError as exc:
        raise WarmFailure(f"no SSH login to the resumed guest: {exc}") from None
    if said(MAC_RESET):
        for guest in reached:
            await guest.aclose()
        raise WarmFailure(
            "another running VM had the golden's MAC address, so Tart gave the clone a new "
            "one and discarded its saved state"
        )
    if not reached:
        status = read_status(runtime_dir / "status.json")
        code = status.exit_code if status is not None else -1
        refused = said(RESTORING)
        raise WarmFailure(
            f"`tart run` exited with code {code} "
            + ("refusing the restore" if refused else "before the restore")
            + f": {last_line(log_file)}",
            golden_at_fault=refused,
        )
    restored = time.monotonic()
    guest, home, clock, sent, host_key = await _verify(
        tart, vm, reached[0], password, nonce, began + within
    )
    return Resumed(
        ip=guest.address.host,
        host_key=host_key,
        shares_root=f"{home}/{warmlayout.GUEST_MOUNT}",
        restore_seconds=restored - began,
        check_seconds=time.monotonic() - restored,
        clock_step=None if clock is None else sent - clock,
    )


async def _verify(
    tart: Tart, vm: str, guest: ssh.Guest, password: str, nonce: str, deadline: float
) -> tuple[ssh.Guest, str, float | None, float, str]:
    """The check of a resumed clone until the nonce comes back: logging in again when the
    connection drops, and at the clone's ARP address when another clone of the golden
    (the same host key) answered at the golden's. WarmFailure when it does not."""
    moved = False
    home, seen, clock, sent, host_key = "", "", None, 0.0, ""
    for attempt in range(CHECK_ATTEMPTS):
        try:
            home, seen, clock, sent, host_key = await _check(guest, password)
        except _Dropped as exc:  # the connection failed, not the check: log in again
            if attempt == CHECK_ATTEMPTS - 1:
                raise WarmFailure(f"checking the resumed guest failed: {exc}") from None
            guest = await _reach(tart, vm, guest.address, deadline)
            continue
        if seen == nonce:
            return guest, home, clock, sent, host_key
        found = "" if moved else await _arp_address(tart, vm)
        if not found or found == guest.address.host:
            break
        moved = True
        guest = await _reach(tart, vm, msgspec.structs.replace(guest.address, host=found), deadline)
    what = "another nonce" if seen else "no nonce"
    raise WarmFailure(
        "the warm share does not show this task's directories (the guest read "
        f"{what} back through it)"
    )


async def _arp_address(tart: Tart, vm: str) -> str:
    """Where Tart's ARP resolver finds a running VM ("" when it does not)."""
    try:
        with trio.fail_after(5):
            return (await tart.run("ip", vm, "--resolver", "arp", "--wait", "2")).strip()
    except (TartCommandError, trio.TooSlowError):
        return ""


async def _check(guest: ssh.Guest, password: str) -> tuple[str, str, float | None, float, str]:
    """Mount, nonce and clock in one command on a resumed guest's connection (closed
    here): its home, the nonce it read, its clock before the step, the host's time sent,
    its host key. A share that shows no nonce at all (not mounted yet) is read again."""
    check = _CHECK.format(
        mount=warmlayout.GUEST_MOUNT, tag=warmlayout.TAG, nonce_file=warmlayout.NONCE_FILE
    )
    secret = password if "\n" not in password else ""
    home, seen, clock, sent = "", "", None, 0.0
    try:
        for attempt in range(CHECK_ATTEMPTS):
            sent = time.time()
            result = await guest.run(
                ["sh", "-c", check, "warm", str(int(sent))],
                stdin=f"{secret}\n".encode(),
                max_output=CHECK_OUTPUT_MAX,
            )
            home, seen, clock = parse_check_reply(result.stdout)
            if seen or attempt == CHECK_ATTEMPTS - 1:
                break
            await trio.sleep(0.2 * (attempt + 1))
    except ssh.GuestError as exc:
        raise _Dropped(str(exc)) from None
    finally:
        await guest.aclose()
    return home, seen, clock, sent, guest.host_key


def last_line(path: Path, limit: int = 400) -> str:
    """The last line ``tart run`` printed (its error), bounded."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            log_file.seek(max(0, log_file.tell() - 4096))
            text = log_file.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


_HOME: Final = re.compile(rb"^home (/[^\n\0]{0,1000})$", re.M)
_NONCE: Final = re.compile(rb"^nonce ([0-9a-f]{32})\s*$", re.M)
_CLOCK: Final = re.compile(rb"^clock ([0-9]{1,12})$", re.M)


def parse_check_reply(output: bytes) -> tuple[str, str, float | None]:
    """The guest's home, the nonce it read and its clock before the step, from its bounded
    reply ("" or None where absent)."""
    home = _HOME.search(output)
    nonce = _NONCE.search(output)
    clock = _CLOCK.search(output)
    return (
        home.group(1).decode(errors="replace") if home else "",
        nonce.group(1).decode() if nonce else "",
        float(clock.group(1)) if clock else None,
    )


async def self_test(
    slot: warmlayout.Slot, record: warmlayout.GoldenRecord, pool: WarmPool, ctx: TaskContext
) -> float:
    """Clone the golden, resume it with the slot pointed at a probe, read its nonce.

    Its seconds when it passed; a :class:`WarmFailure` (or a tart error) when this host
    does not resume this golden as the driver needs.
    """
    began = time.monotonic()
    tart = ctx.tart
    vm = slot.probe_vm()
    runtime = slot.base / f"s{slot.index}.selftest"
    await remove_vm(tart, vm)
    make_private_dir(str(runtime))
    for stale in ("status.json", "tart-run.pid", "tart-run.log"):
        (runtime / stale).unlink(missing_ok=True)
    probe, nonce = warmlayout.new_probe(slot)
    warmlayout.point(slot, {"probe": probe})
    supervisor: tuple[int, str | None] | None = None
    try:
        async with ctx.provision_lock:
            with trio.fail_after(vms.TART_CALL_SECONDS):
                await tart.run("clone", record.vm, vm)
        if not state_file(tart, vm).exists():
            raise WarmFailure("a clone of the golden carries no saved state")
        async with ctx.launch_lock:
            supervisor = await start_supervisor(
                tart, ctx.launch_prefix, runtime, clone_run(record, vm)
            )
        within = budget(pool)
        with trio.fail_after(within):
            await resume(
                tart,
                vm,
                runtime,
                supervisor,
                record,
                pool.ssh_user,
                pool.ssh_password,
                nonce,
                within,
            )
        return time.monotonic() - began
    except trio.TooSlowError:
        raise WarmFailure(
            f"the self-test's clone did not answer within {pool.resume_timeout} (resume_timeout)"
        ) from None
    finally:
        with trio.CancelScope(shield=True):
            if supervisor is not None:
                proc.signal_process(*supervisor, 15)
                with trio.move_on_after(15):
                    await proc.wait_exit(*supervisor)
            await remove_vm(tart, vm)
            warmlayout.reset(slot)
            shutil.rmtree(runtime, ignore_errors=True)


def describe_step(step: float | None) -> str:
    if step is None:
        return "clock not stepped"
    return f"clock stepped {step:+.0f}s"
