"""Nomad's BasePlugin and Driver services. Each method translates and calls the domain."""

from __future__ import annotations

import asyncio

import msgspec
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from tart_trio._bridge import run_aio, run_trio
from tart_trio._config.hclspec import object_spec
from tart_trio._config.plugin import PluginConfig
from tart_trio._config.task import TaskConfig
from tart_trio._driver.driver import Driver
from tart_trio._model import ExecInput, ExecStream, Fingerprint, ResourceUsage, TaskEvent
from tart_trio._proto.hashicorp.nomad.plugins.base import base_grpc, base_pb2
from tart_trio._proto.hashicorp.nomad.plugins.drivers import driver_grpc
from tart_trio._proto.hashicorp.nomad.plugins.drivers import driver_pb2 as pb
from tart_trio._rpc import convert
from tart_trio._rpc.status import translate_errors

_PLUGIN_SPEC = convert.spec(object_spec(PluginConfig))
_TASK_SPEC = convert.spec(object_spec(TaskConfig))


class BasePlugin(base_grpc.BasePluginBase):
    """PluginInfo, ConfigSchema, SetConfig."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    @translate_errors
    async def PluginInfo(
        self, stream: Stream[base_pb2.PluginInfoRequest, base_pb2.PluginInfoResponse]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(convert.plugin_info(self._driver.plugin_info()))

    @translate_errors
    async def ConfigSchema(
        self, stream: Stream[base_pb2.ConfigSchemaRequest, base_pb2.ConfigSchemaResponse]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(base_pb2.ConfigSchemaResponse(spec=_PLUGIN_SPEC))

    @translate_errors
    async def SetConfig(
        self, stream: Stream[base_pb2.SetConfigRequest, base_pb2.SetConfigResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        ports = None
        topology = None
        if request.HasField("nomad_config") and request.nomad_config.HasField("driver"):
            driver = request.nomad_config.driver
            ports = (driver.ClientMinPort, driver.ClientMaxPort)
            topology = convert.topology(driver)
        self._driver.set_config(request.msgpack_config, request.plugin_api_version, ports, topology)
        await stream.send_message(base_pb2.SetConfigResponse())


def _unimplemented(what: str) -> GRPCError:
    return GRPCError(Status.UNIMPLEMENTED, f"{what} is not supported by the tart driver")


class DriverService(driver_grpc.DriverBase):
    """The Driver service."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    @translate_errors
    async def Init(self, stream: Stream[pb.InitRequest, pb.InitResponse]) -> None:
        await stream.recv_message()
        await stream.send_message(pb.InitResponse())

    @translate_errors
    async def Shutdown(self, stream: Stream[pb.ShutdownRequest, pb.ShutdownResponse]) -> None:
        await stream.recv_message()
        await stream.send_message(pb.ShutdownResponse())

    @translate_errors
    async def TaskConfigSchema(
        self, stream: Stream[pb.TaskConfigSchemaRequest, pb.TaskConfigSchemaResponse]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(pb.TaskConfigSchemaResponse(spec=_TASK_SPEC))

    @translate_errors
    async def Capabilities(
        self, stream: Stream[pb.CapabilitiesRequest, pb.CapabilitiesResponse]
    ) -> None:
        await stream.recv_message()
        await stream.send_message(convert.capabilities(self._driver.capabilities()))

    @translate_errors
    async def Fingerprint(
        self, stream: Stream[pb.FingerprintRequest, pb.FingerprintResponse]
    ) -> None:
        await stream.recv_message()

        async def deliver(fp: Fingerprint) -> None:
            await run_aio(stream.send_message, convert.fingerprint(fp))

        await run_trio(self._driver.watch_fingerprints, deliver)

    @translate_errors
    async def TaskEvents(self, stream: Stream[pb.TaskEventsRequest, pb.DriverTaskEvent]) -> None:
        await stream.recv_message()

        async def deliver(event: TaskEvent) -> None:
            await run_aio(stream.send_message, convert.task_event(event))

        await run_trio(self._driver.watch_events, deliver)

    @translate_errors
    async def RecoverTask(
        self, stream: Stream[pb.RecoverTaskRequest, pb.RecoverTaskResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        task = convert.nomad_task(request.handle.config)
        if request.task_id and not task.id:
            task = msgspec.structs.replace(task, id=request.task_id)
        await run_trio(self._driver.recover_task, task, request.handle.driver_state)
        await stream.send_message(pb.RecoverTaskResponse())

    @translate_errors
    async def StartTask(self, stream: Stream[pb.StartTaskRequest, pb.StartTaskResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        task = convert.nomad_task(request.task)
        state, ip = await run_trio(
            self._driver.start_task,
            task,
            request.task.msgpack_driver_config,
            convert.task_env(request.task),
        )
        await stream.send_message(convert.start_response(request, state, ip))

    @translate_errors
    async def WaitTask(self, stream: Stream[pb.WaitTaskRequest, pb.WaitTaskResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        result = await run_trio(self._driver.wait_task, request.task_id)
        await stream.send_message(convert.wait_response(result))

    @translate_errors
    async def StopTask(self, stream: Stream[pb.StopTaskRequest, pb.StopTaskResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        timeout = request.timeout.ToTimedelta().total_seconds()
        await run_trio(self._driver.stop_task, request.task_id, timeout, request.signal)
        await stream.send_message(pb.StopTaskResponse())

    @translate_errors
    async def DestroyTask(
        self, stream: Stream[pb.DestroyTaskRequest, pb.DestroyTaskResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        await run_trio(self._driver.destroy_task, request.task_id, request.force)
        await stream.send_message(pb.DestroyTaskResponse())

    @translate_errors
    async def InspectTask(
        self, stream: Stream[pb.InspectTaskRequest, pb.InspectTaskResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        status = self._driver.inspect_task(request.task_id)
        await stream.send_message(convert.task_status(status))

    @translate_errors
    async def TaskStats(self, stream: Stream[pb.TaskStatsRequest, pb.TaskStatsResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        task_id = request.task_id
        interval = request.collection_interval.ToTimedelta().total_seconds() or 1.0

        async def deliver(usage: ResourceUsage) -> None:
            await run_aio(stream.send_message, convert.task_stats(task_id, usage))

        await run_trio(self._driver.watch_stats, task_id, interval, deliver)

    @translate_errors
    async def SignalTask(self, stream: Stream[pb.SignalTaskRequest, pb.SignalTaskResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        await run_trio(self._driver.signal_task, request.task_id, request.signal)
        await stream.send_message(pb.SignalTaskResponse())

    @translate_errors
    async def ExecTask(self, stream: Stream[pb.ExecTaskRequest, pb.ExecTaskResponse]) -> None:
        request = await stream.recv_message()
        assert request is not None
        timeout = request.timeout.ToTimedelta().total_seconds()
        output = await run_trio(
            self._driver.exec_task, request.task_id, list(request.command), timeout
        )
        await stream.send_message(convert.exec_response(output))

    @translate_errors
    async def ExecTaskStreaming(
        self, stream: Stream[pb.ExecTaskStreamingRequest, pb.ExecTaskStreamingResponse]
    ) -> None:
        first = await stream.recv_message()
        if first is None or not first.HasField("setup"):
            raise GRPCError(Status.INVALID_ARGUMENT, "first message should always be setup")
        setup = first.setup
        sending = asyncio.Lock()

        async def receive() -> ExecInput | None:
            while (request := await run_aio(stream.recv_message)) is not None:
                item = convert.exec_input(request)
                if item is not None:
                    return item
            return None

        async def send_aio(message: pb.ExecTaskStreamingResponse) -> None:
            async with sending:
                await stream.send_message(message)

        async def send(which: ExecStream, data: bytes) -> None:
            await run_aio(send_aio, convert.exec_output(which, data))

        result = await run_trio(
            self._driver.exec_streaming,
            setup.task_id,
            list(setup.command),
            setup.tty,
            receive,
            send,
        )
        for message in convert.exec_end(result):
            await stream.send_message(message)

    async def CreateNetwork(
        self, stream: Stream[pb.CreateNetworkRequest, pb.CreateNetworkResponse]
    ) -> None:
        raise _unimplemented("CreateNetwork")

    async def DestroyNetwork(
        self, stream: Stream[pb.DestroyNetworkRequest, pb.DestroyNetworkResponse]
    ) -> None:
        raise _unimplemented("DestroyNetwork")
