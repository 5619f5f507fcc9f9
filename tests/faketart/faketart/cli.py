"""`tart` entry: call recording, dispatch, and Tart's three error paths."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

from .argparse_swift import HelpRequested, parse
from .common import (
    DEFAULT_VERSION,
    Cancelled,
    TartError,
    UsageErr,
    at_least,
    err,
    home_path,
    out,
)

RECORDED_ENV = ("HOME", "USER", "LOGNAME", "PATH", "TART_HOME", "CI", "TART_NO_AUTO_PRUNE")
SECRET_ENV = ("TART_REGISTRY_USERNAME", "TART_REGISTRY_PASSWORD", "TART_REGISTRY_HOSTNAME")

ROOT_HELP = """OVERVIEW: faketart, a Linux test double of Tart (macOS/Linux VMs on Apple Silicon).

USAGE: tart <subcommand>

OPTIONS:
  --version               Show the version.
  -h, --help              Show help information.

SUBCOMMANDS:
  create                  Create a VM
  clone                   Clone a VM
  run                     Run a VM
  set                     Modify VM's configuration
  get                     Get a VM's configuration
  list                    List created VMs
  login                   Login to a registry
  logout                  Logout from a registry
  ip                      Get VM's IP address
  exec                    Execute a command in a running VM
  pull                    Pull a VM from a registry
  push                    Push a VM to a registry
  import                  Import VM from a compressed .tvm file
  export                  Export VM to a compressed .tvm file
  prune                   Prune OCI and IPSW caches or local VMs
  rename                  Rename a local VM
  stop                    Stop a VM
  delete                  Delete a VM
  suspend                 Suspend a VM

  See 'tart help <subcommand>' for detailed help."""


def record_call(argv: list[str]) -> None:
    """Append one JSON line per invocation to $TART_HOME/faketart-calls.jsonl."""
    try:
        home = home_path()
        os.makedirs(home, exist_ok=True)
        now = time.time()
        rec = {
            "argv": list(argv),
            "cwd": os.getcwd(),
            "uid": os.getuid(),
            "gid": os.getgid(),
            "pid": os.getpid(),
            "env": {k: os.environ.get(k) for k in RECORDED_ENV},
            "secrets_set": {k: k in os.environ for k in SECRET_ENV},
            "time": now,
            "time_iso": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1e6):06d}Z",
        }
        line = (json.dumps(rec, sort_keys=True) + "\n").encode()
        fd = os.open(
            os.path.join(home, "faketart-calls.jsonl"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass


def _cancel(_sig, _frame):
    raise Cancelled()


def main(argv: list[str]) -> int:
    record_call(argv)
    signal.signal(signal.SIGINT, _cancel)  # commands are cancelled by SIGINT (run installs its own)
    from .commands import build_commands, cmd_exec
    from .storage import gc_tmp

    cmds = build_commands()
    cmd = None
    try:
        if not argv or argv[0] in ("-h", "--help", "-help"):
            out(ROOT_HELP)
            return 0
        if argv[0] == "--version":
            out(os.environ.get("FAKETART_VERSION") or DEFAULT_VERSION)
            return 0
        if argv[0] == "help":
            c = cmds.get(argv[1]) if len(argv) > 1 else None
            out(c.help_text() if c else ROOT_HELP)
            return 0
        if argv[0] == "exec" and at_least("2.27.0"):
            if any(a in ("-h", "--help") for a in argv[1:2]):
                out(
                    "OVERVIEW: Execute a command in a running VM\n\nUSAGE: tart exec [-i] [-t] "
                    "<name> <command> ..."
                )
                return 0
            from .common import tart_home

            gc_tmp(tart_home())
            return cmd_exec(argv[1:])
        cmd = cmds.get(argv[0])
        if cmd is None:
            raise UsageErr(f"Unexpected argument '{argv[0]}'")
        try:
            opts = parse(cmd, argv[1:])
        except HelpRequested:
            out(cmd.help_text())
            return 0
        if cmd.name not in ("pull", "clone"):
            from .common import tart_home

            gc_tmp(tart_home())
        return int(cmd.run(opts) or 0)
    except UsageErr as e:
        err(f"Error: {e.message}")
        if e.help_line:
            err(e.help_line)
        if cmd is not None:
            err(f"Usage: {cmd.usage()}")
            err(f"  See 'tart {cmd.name} --help' for more information.")
        else:
            err("Usage: tart <subcommand>")
            err("  See 'tart --help' for more information.")
        return 64
    except TartError as e:
        err(e.render())
        return e.code
    except Cancelled:
        err("Error: CancellationError()")
        return 1
    except KeyboardInterrupt:
        err("Error: CancellationError()")
        return 1


def entry() -> None:
    code = main(sys.argv[1:])
    with contextlib.suppress(BrokenPipeError, ValueError):
        sys.stdout.flush()
    os._exit(code)
