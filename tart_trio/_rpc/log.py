"""Logging in go-hclog's JSON line format on stderr.

go-plugin reads the plugin's stderr line by line and re-logs every JSON object with
string ``@level``, ``@message`` and ``@timestamp`` (exactly six fractional digits) at that
level in the Nomad agent log. Anything else lands at DEBUG, invisible by default. After an
agent crash stderr is a broken pipe; logging must never raise because of that.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, TextIO

ROOT_MODULE: Final = "nomad-driver-tart"
LOG_LEVEL_ENV: Final = "NOMAD_DRIVER_TART_LOG_LEVEL"

_LEVELS: Final = {
    logging.DEBUG - 5: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}
TRACE: Final = logging.DEBUG - 5
_BY_NAME: Final = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_RESERVED: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))


def hclog_level(levelno: int) -> str:
    """Map a stdlib level number to the nearest hclog level name."""
    for threshold in sorted(_LEVELS, reverse=True):
        if levelno >= threshold:
            return _LEVELS[threshold]
    return "trace"


def timestamp(now: datetime | None = None) -> str:
    """Format a time the way hclog's JSON parser requires (six fractional digits)."""
    return (now or datetime.now(UTC)).isoformat(timespec="microseconds")


def format_line(level: str, message: str, module: str, fields: Mapping[str, object]) -> str:
    """Build one hclog JSON line. ``@level``, ``@message`` and ``@timestamp`` are strings."""
    entry: dict[str, object] = {
        "@level": level,
        "@message": str(message),
        "@module": module,
        "@timestamp": timestamp(),
    }
    for key, value in fields.items():
        if not key.startswith("@"):
            entry[key] = value
    return json.dumps(entry, default=str, ensure_ascii=False)


class HclogHandler(logging.Handler):
    """Write records as hclog JSON lines; a closed or broken stream is silently dropped."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream: TextIO | None = stream
        self._lock_out = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in vars(record).items() if k not in _RESERVED}
        if record.exc_info and record.exc_info[0] is not None:
            fields["error"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        name = record.name
        module = ROOT_MODULE if name in ("", "root", ROOT_MODULE) else f"{ROOT_MODULE}.{name}"
        line = format_line(hclog_level(record.levelno), record.getMessage(), module, fields)
        self.write_line(line)

    def write_line(self, line: str) -> None:
        with self._lock_out:
            stream = self._stream
            if stream is None:
                return
            try:
                stream.write(line + "\n")
                stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                # The agent that read our stderr is gone (reattach after a crash): keep serving.
                self._stream = None


def level_from_name(name: str | None, default: int = logging.INFO) -> int:
    """Parse an hclog level name (case-insensitive); unknown names give ``default``."""
    if not name:
        return default
    return _BY_NAME.get(name.strip().lower(), default)


def setup(level: int) -> HclogHandler:
    """Route all logging to stderr as hclog JSON and log uncaught exceptions as errors."""
    logging.addLevelName(TRACE, "TRACE")
    handler = HclogHandler(sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries we use are chatty at DEBUG; keep their noise out of the agent log.
    for noisy in ("asyncssh", "grpclib", "hpack", "h2", "trio_asyncio", "asyncio"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    warnings.showwarning = _showwarning
    return handler


def _showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Python warnings (a dependency's deprecation, say) as hclog lines, never raw text.

    Python's default prints them to stderr as two plain lines, which go-plugin would log at
    DEBUG as text of unknown origin. The warnings filters still decide what is shown.
    """
    logging.getLogger("warnings").warning(
        "%s: %s", category.__name__, message, extra={"file": filename, "line": lineno}
    )


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    logging.getLogger().error("uncaught exception", exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger().error(
        "uncaught exception in thread",
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def stdout_to_stderr() -> None:
    """Point fd 1 at stderr so stray prints after the handshake cannot stall go-plugin."""
    sys.stdout.flush()
    os.dup2(2, 1)
