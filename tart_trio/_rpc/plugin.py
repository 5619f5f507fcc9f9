"""The go-plugin process contract: socket, gRPC server, handshake line, shutdown.

The gRPC server starts serving *before* the handshake line is printed; nothing reaches
stdout before that line, and afterwards fd 1 points at stderr. The one asyncio bridge of
the program (``trio_asyncio.open_loop``) is opened here.
"""

from __future__ import annotations

import functools
import grp
import logging
import os
import shutil
import ssl
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import trio
from grpclib.server import Server

from tart_trio import _bridge
from tart_trio._driver.driver import Driver
from tart_trio._rpc import log as hclog
from tart_trio._rpc.goplugin import Controller, Health, Stdio
from tart_trio._rpc.services import BasePlugin, DriverService
from tart_trio._rpc.status import StatusDetailsCodec

CORE_PROTOCOL: Final = 1
APP_PROTOCOL: Final = 2
SHUTDOWN_GRACE: Final = 1.0
log = logging.getLogger("plugin")


def negotiate(env: Mapping[str, str]) -> int:
    """The app protocol to announce: ours if the host offers it (else the host reports it)."""
    offered = {v.strip() for v in env.get("PLUGIN_PROTOCOL_VERSIONS", "").split(",")}
    if str(APP_PROTOCOL) not in offered and offered - {""}:
        log.warning("host does not offer our protocol", extra={"offered": sorted(offered)})
    return APP_PROTOCOL


def socket_path(env: Mapping[str, str]) -> Path:
    """A short, private socket path (unix sockets allow ~100 bytes)."""
    base = env.get("PLUGIN_UNIX_SOCKET_DIR") or None
    return Path(tempfile.mkdtemp(prefix="tart-", dir=base)) / "plugin.sock"


def _share_with_group(path: Path, group: str) -> None:
    gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    for target, mode in ((path.parent, 0o750), (path, 0o660)):
        os.chown(target, -1, gid)
        os.chmod(target, mode)


def handshake_line(app: int, path: Path, cert: str | None) -> str:
    """``CORE|APP|unix|PATH|grpc``, plus our certificate only under AutoMTLS."""
    fields = [str(CORE_PROTOCOL), str(app), "unix", str(path), "grpc"]
    if cert is not None:
        fields.append(cert)
    return "|".join(fields)


async def serve(env: Mapping[str, str]) -> int:
    """Serve until the host asks us to stop; return the exit code."""
    app = negotiate(env)
    path = socket_path(env)
    tls: ssl.SSLContext | None = None
    cert: str | None = None
    if env.get("PLUGIN_CLIENT_CERT"):
        from tart_trio._rpc.mtls import server_context

        tls, cert = server_context(env["PLUGIN_CLIENT_CERT"])
    driver = Driver()
    stop = trio.Event()
    try:
        async with _bridge.open_loop(), trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            server = Server(
                [
                    BasePlugin(driver),
                    DriverService(driver),
                    Health(),
                    Controller(stop.set),
                    Stdio(),
                ],
                status_details_codec=StatusDetailsCodec(),
            )
            await _bridge.run_aio(functools.partial(server.start, path=str(path), ssl=tls))
            if env.get("PLUGIN_UNIX_SOCKET_GROUP"):
                _share_with_group(path, env["PLUGIN_UNIX_SOCKET_GROUP"])
            sys.stdout.write(handshake_line(app, path, cert) + "\n")
            sys.stdout.flush()
            hclog.stdout_to_stderr()
            log.info("plugin serving", extra={"socket": str(path), "tls": tls is not None})
            await stop.wait()
            log.info("shutdown requested by the host")
            server.close()
            with trio.move_on_after(SHUTDOWN_GRACE):
                await _bridge.run_aio(
                    server.wait_closed,
                )
            nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    return 0
