"""Start the real plugin executable the way go-plugin does, for process-contract tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from grpclib.client import Channel

from tart_trio._main import MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE
from tart_trio._proto.plugin import grpc_controller_grpc, grpc_controller_pb2

T = TypeVar("T")


def plugin_command() -> list[str]:
    """The installed console script, next to the running interpreter."""
    script = Path(sys.executable).parent / "nomad-driver-tart"
    if script.exists():
        return [str(script)]
    found = shutil.which("nomad-driver-tart")
    assert found, "nomad-driver-tart is not installed in this environment"
    return [found]


def nomad_env(**extra: str) -> dict[str, str]:
    """The environment go-plugin gives a plugin under Nomad."""
    env = dict(os.environ)
    env.update(
        {
            MAGIC_COOKIE_KEY: MAGIC_COOKIE_VALUE,
            "PLUGIN_PROTOCOL_VERSIONS": "2",
            "PLUGIN_MIN_PORT": "10000",
            "PLUGIN_MAX_PORT": "25000",
        }
    )
    env.update(extra)
    return env


@dataclass
class Plugin:
    """A running plugin process and its handshake."""

    process: subprocess.Popen[bytes]
    handshake: list[str]

    @property
    def socket(self) -> str:
        return self.handshake[3]

    def call(self, rpc: Callable[[Channel], Awaitable[T]], **channel_args: object) -> T:
        """Run one client coroutine against the plugin's socket."""

        async def run() -> T:
            channel = Channel(path=self.socket, **channel_args)  # type: ignore[arg-type]
            try:
                return await rpc(channel)
            finally:
                channel.close()
                # Let the transport's close callbacks run before the loop goes away.
                await asyncio.sleep(0)
                await asyncio.sleep(0)

        return asyncio.run(run())

    def shutdown(self) -> int:
        """Ask the plugin to exit like go-plugin's Kill does; return its exit code."""

        async def stop(channel: Channel) -> None:
            await grpc_controller_grpc.GRPCControllerStub(channel).Shutdown(
                grpc_controller_pb2.Empty()
            )

        self.call(stop)
        return self.process.wait(timeout=2)


@contextmanager
def running_plugin(*args: str, stderr: int = subprocess.PIPE, **env: str) -> Iterator[Plugin]:
    """Launch the plugin and read its handshake line; kill it on the way out."""
    process = subprocess.Popen(
        [*plugin_command(), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=nomad_env(**env),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.endswith("\n"), f"no handshake line; got {line!r}"
        yield Plugin(process, line.rstrip("\n").split("|"))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
