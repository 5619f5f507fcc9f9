"""go-plugin's own services: health, controller (Shutdown) and stdio."""

from __future__ import annotations

from collections.abc import Callable

import trio
from google.protobuf import empty_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from tart_trio._bridge import run_trio
from tart_trio._proto.grpc.health.v1 import health_grpc, health_pb2
from tart_trio._proto.plugin import (
    grpc_controller_grpc,
    grpc_controller_pb2,
    grpc_stdio_grpc,
    grpc_stdio_pb2,
)

SERVICE_NAMES = ("", "plugin")
_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class Health(health_grpc.HealthBase):
    """grpc.health.v1: "plugin" (go-plugin's service name) is SERVING while we run."""

    async def Check(
        self, stream: Stream[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        if request.service not in SERVICE_NAMES:
            raise GRPCError(Status.NOT_FOUND, f"unknown service {request.service!r}")
        await stream.send_message(_SERVING)

    async def Watch(
        self, stream: Stream[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse]
    ) -> None:
        await self.Check(stream)
        await run_trio(trio.sleep_forever)


class Controller(grpc_controller_grpc.GRPCControllerBase):
    """Shutdown answers at once; the plugin process then exits with code 0."""

    def __init__(self, request_shutdown: Callable[[], None]) -> None:
        self._request_shutdown = request_shutdown

    async def Shutdown(
        self, stream: Stream[grpc_controller_pb2.Empty, grpc_controller_pb2.Empty]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(grpc_controller_pb2.Empty())
        self._request_shutdown()


class Stdio(grpc_stdio_grpc.GRPCStdioBase):
    """Our stdout and stderr are not forwarded (logs go to stderr); the stream stays open."""

    async def StreamStdio(self, stream: Stream[empty_pb2.Empty, grpc_stdio_pb2.StdioData]) -> None:
        await stream.recv_message()
        await run_trio(trio.sleep_forever)
