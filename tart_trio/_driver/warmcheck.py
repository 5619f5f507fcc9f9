"""``nomad-driver-tart warm-check``: what this host supports for warm start, run by hand.

The same build and self-test a warm pool runs before it serves a job, outside Nomad: a
golden of the image is built (pulled if needed, booted with ``--suspendable``, suspended),
cloned, resumed with its shares pointed at a probe, and the probe's nonce read back in the
guest. It prints each phase's time and the verdict, then removes what it made. The guest
user's password comes from ``TART_SSH_PASSWORD`` (default ``admin``), never from argv.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from tart_trio import _bridge
from tart_trio._config.plugin import WarmPool
from tart_trio._errors import TartTrioError
from tart_trio._host.users import resolve_user
from tart_trio._images.pulls import Pulls
from tart_trio._tart.cli import Tart, locate_tart
from tart_trio._task import golden, warmlayout
from tart_trio._task.context import TaskContext
from tart_trio._task.slots import MacOSSlots
from tart_trio._task.warm import os_build

COMMAND = "warm-check"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"nomad-driver-tart {COMMAND}",
        description="Build a golden VM, resume a clone of it, and report whether this host "
        "supports the driver's warm start.",
    )
    parser.add_argument("--image", required=True, help="remote macOS image to test with")
    parser.add_argument("--cores", type=int, default=4)
    parser.add_argument("--memory", type=int, default=8192, help="MB")
    parser.add_argument("--network", choices=("shared", "softnet"), default="shared")
    parser.add_argument("--ssh-user", default="admin")
    parser.add_argument("--tart-path", default="", help="the tart executable (default: PATH)")
    parser.add_argument("--tart-home", default="", help="TART_HOME (default: tart's own)")
    parser.add_argument("--tart-user", default="", help="run tart as this user (when root)")
    parser.add_argument("--boot-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--resume-timeout", default="30s")
    return parser


async def _check(args: argparse.Namespace, say: Callable[[str], None]) -> bool:
    path = locate_tart(args.tart_path)
    if path is None:
        say("tart was not found: install Tart or pass --tart-path")
        return False
    tart = Tart(path, args.tart_home, user=resolve_user(args.tart_user))
    pool = WarmPool(
        name="check",
        image=args.image,
        cores=args.cores,
        memory=args.memory,
        network=args.network,
        ssh_user=args.ssh_user,
        ssh_password=os.environ.get("TART_SSH_PASSWORD", "admin"),
        resume_timeout=args.resume_timeout,
    )
    version = (await tart.run("--version")).strip()
    host = golden.HostIdentity(
        tart_path=path,
        tart_version=version,
        os_build=await trio.to_thread.run_sync(os_build),
        tart_user=args.tart_user,
        tart_home=args.tart_home,
        login_session=False,
    )
    say(f"tart {version} at {path}; host OS build {host.os_build or 'unknown'}")
    with tempfile.TemporaryDirectory(prefix="nomad-tart-warm-check-") as scratch:
        os.chmod(scratch, 0o755)
        slot = warmlayout.Slot(Path(scratch), pool.name, 0)
        async with _bridge.open_loop(), trio.open_nursery() as nursery:
            ctx = TaskContext(
                tart=tart,
                pulls=Pulls(nursery),
                boot_timeout=args.boot_timeout,
                pull_timeout=3600.0,
                pull_inactivity=300.0,
                max_macos_vms=2,
                launch_lock=trio.Lock(),
                provision_lock=trio.Lock(),
                slots=MacOSSlots(lambda: None),
            )
            record: warmlayout.GoldenRecord | None = None
            try:
                began = time.monotonic()
                record = await golden.build(slot, pool, host, ctx)
                say(
                    f"golden {record.vm}: built and suspended in "
                    f"{time.monotonic() - began:.1f}s (suspend {record.suspend_seconds:.1f}s, "
                    f"saved state {record.state_bytes / 1e9:.2f} GB)"
                )
                seconds = await golden.self_test(slot, record, pool, ctx)
                say(
                    f"self-test passed in {seconds:.1f}s: a clone resumed, answered SSH with "
                    "the golden's host key, and its shares showed a new nonce"
                )
                return True
            except golden.WarmFailure as exc:
                say(f"self-test failed: {exc.reason}")
                return False
            except (TartTrioError, OSError, trio.TooSlowError) as exc:
                say(f"building the golden failed: {exc or type(exc).__name__}")
                return False
            finally:
                if record is not None:
                    await golden.remove_vm(tart, record.vm)
                nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    """Run the check; exit 0 when this host supports warm start, 1 when it does not."""
    args = _parser().parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    say(f"Checking warm start with {args.image} (this boots and suspends a VM: minutes)")
    try:
        supported = trio.run(_check, args, say)
    except KeyboardInterrupt:
        return 130
    verdict = "supports" if supported else "does NOT support"
    print(f"This host {verdict} warm start for {args.image}.")
    sys.stdout.flush()
    return 0 if supported else 1
