"""The ``nomad-driver-tart`` executable.

Only the standard library is imported until we know Nomad launched us: Nomad starts the
plugin up to three times per agent start, so a quick start matters.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Final

from tart_trio._host import helpers
from tart_trio._version import __version__

MAGIC_COOKIE_KEY: Final = "NOMAD_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE_VALUE: Final = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255"

NOT_UNDER_NOMAD: Final = """\
nomad-driver-tart {version} is a Nomad task driver plugin; Nomad starts it, not you.

To use it, copy this executable into the Nomad client's plugin_dir and name it in the
agent configuration:

    plugin "nomad-driver-tart" {{
      config {{
        enabled = true
      }}
    }}

then run jobs with driver = "tart". See the README for details.
"""

USAGE: Final = """\
usage: nomad-driver-tart [--version] [--log-level trace|debug|info|warn|error]
       nomad-driver-tart warm-check --image IMAGE [options]   (see warm-check --help)
"""


def _log_level_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--log-level="):
            return arg.split("=", 1)[1]
        if arg == "--log-level" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _helper(name: str, args: list[str]) -> int:
    """Run a helper subcommand; they import the standard library only."""
    if name == helpers.SUPERVISE:
        from tart_trio._host import supervisor

        return supervisor.main(args)
    from tart_trio._host import runas

    return runas.main(args)


def main(executable: Sequence[str] | None = None) -> None:
    """Entry point: refuse politely outside Nomad, otherwise serve the plugin.

    ``executable`` is how to start this program again (the zipapp's launcher passes its
    extracted payload); by default it is read off how Python started this process.
    """
    argv = sys.argv[1:]
    if argv[:1] in ([helpers.SUPERVISE], [helpers.RUNAS]):
        sys.exit(_helper(argv[0], argv[1:]))
    if executable is None:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        executable = helpers.invocation(sys.argv[0], spec.name if spec else None)
    helpers.set_executable(executable)
    if argv[:1] == ["warm-check"]:
        from tart_trio._driver import warmcheck

        sys.exit(warmcheck.main(argv[1:]))
    if "--version" in argv or "-v" in argv:
        print(f"nomad-driver-tart {__version__}")
        sys.exit(0)
    if "--help" in argv or "-h" in argv:
        print(USAGE + "\n" + NOT_UNDER_NOMAD.format(version=__version__))
        sys.exit(0)
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        sys.stderr.write(NOT_UNDER_NOMAD.format(version=__version__))
        sys.exit(1)
    # Nomad shares its terminal and process group with us; Ctrl-C is the agent's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from tart_trio._rpc import log as hclog

    level_name = _log_level_arg(argv) or os.environ.get(hclog.LOG_LEVEL_ENV)
    hclog.setup(hclog.level_from_name(level_name))

    import trio

    from tart_trio._rpc import plugin

    try:
        code = trio.run(plugin.serve, dict(os.environ))
    except BaseException:
        import logging

        logging.getLogger().error("plugin failed", exc_info=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
