"""A tiny go-plugin compatible Nomad driver used to self-check nomadsim.

Run as ``python fixture_plugin.py`` with PYTHONPATH pointing at Python code
generated from ``proto/`` (``--python_out`` + ``--grpclib_python_out``). It
is deliberately small: asyncio + grpclib, a unix socket, the handshake line,
JSON logs on stderr, and just enough of BasePlugin/Driver to exercise
nomadsim end to end. Knobs (environment):

* ``FIXTURE_IGNORE_SHUTDOWN=1``: GRPCController.Shutdown answers but the
  process keeps running (go-plugin then SIGKILLs it after 2 s).
* ``FIXTURE_FINGERPRINTS``: JSON, one list per Fingerprint call (the last
  repeats) of the reports to send instead of the usual one: each an object
  of attributes (strings, numbers, booleans), or ``"end"`` to end the stream.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import importlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import StatusDetailsCodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

COOKIE_KEY = "NOMAD_PLUGIN_MAGIC_COOKIE"
COOKIE_VALUE = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255"

base_pb: Any = importlib.import_module("hashicorp.nomad.plugins.base.base_pb2")
driver_pb: Any = importlib.import_module("hashicorp.nomad.plugins.drivers.driver_pb2")
hclspec_pb: Any = importlib.import_module("hashicorp.nomad.plugins.shared.hclspec.hcl_spec_pb2")
attr_pb: Any = importlib.import_module("hashicorp.nomad.plugins.shared.structs.attribute_pb2")
recov_pb: Any = importlib.import_module(
    "hashicorp.nomad.plugins.shared.structs.recoverable_error_pb2"
)
ctl_pb: Any = importlib.import_module("plugin.grpc_controller_pb2")
any_pb: Any = importlib.import_module("google.protobuf.any_pb2")


def log(level: str, message: str, **kv: Any) -> None:
    """One hclog-compatible JSON line on stderr."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
    line = {"@level": level, "@message": message, "@module": "fixture", "@timestamp": now, **kv}
    try:
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()
    except BrokenPipeError:
        pass


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


class StatusDetails(StatusDetailsCodecBase):
    """Encodes google.rpc.Status{code, message, details: [Any]} by hand."""

    def encode(self, status: Status, message: str | None, details: Any) -> bytes:
        out = _varint(1 << 3) + _varint(status.value)
        if message:
            out += _field(2, message.encode())
        for d in details or ():
            packed = any_pb.Any()
            packed.Pack(d)
            out += _field(3, packed.SerializeToString())
        return out

    def decode(self, status: Status, message: str | None, data: bytes) -> Any:
        return None


def spec_attr(type_: str, *, name: str = "", required: bool = False) -> Any:
    return hclspec_pb.Spec(Attr=hclspec_pb.Attr(name=name, type=type_, required=required))


def spec_default(primary: Any, literal: str) -> Any:
    return hclspec_pb.Spec(
        default=hclspec_pb.Default(
            primary=primary, default=hclspec_pb.Spec(literal=hclspec_pb.Literal(value=literal))
        )
    )


def spec_object(**attrs: Any) -> Any:
    return hclspec_pb.Spec(object=hclspec_pb.Object(attributes=attrs))


CONFIG_SPEC = spec_object(
    greeting=spec_default(spec_attr("string", name="greeting"), '"hello"'),
    ratio=spec_attr("number"),
)

TASK_SPEC = spec_object(
    message=spec_attr("string", required=True),
    fail=spec_default(spec_attr("bool", name="fail"), "false"),
    exit_code=spec_default(spec_attr("number", name="exit_code"), "0"),
    tags=hclspec_pb.Spec(
        block_list=hclspec_pb.BlockList(nested=spec_object(name=spec_attr("string", required=True)))
    ),
)


def attribute(value: str | float | bool) -> Any:
    """A fingerprint attribute of the value's type."""
    if isinstance(value, bool):
        return attr_pb.Attribute(bool_val=value)
    if isinstance(value, int):
        return attr_pb.Attribute(int_val=value)
    if isinstance(value, float):
        return attr_pb.Attribute(float_val=value)
    return attr_pb.Attribute(string_val=value)


def unary(func: Callable[[Any], Any], req: Any, resp: Any) -> Handler:
    async def handle(stream: Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        await stream.send_message(await func(request))

    return Handler(handle, Cardinality.UNARY_UNARY, req, resp)


class Fixture:
    def __init__(self) -> None:
        self.config = b""
        self.nomad_config: Any = None
        self.tasks: dict[str, int] = {}
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.stop = asyncio.Event()
        self.fingerprint_calls = 0

    # -- base --------------------------------------------------------------
    async def plugin_info(self, _: Any) -> Any:
        return base_pb.PluginInfoResponse(
            type=base_pb.DRIVER,
            plugin_api_versions=["v0.1.0"],
            plugin_version="0.1.0",
            name="fixture",
        )

    async def config_schema(self, _: Any) -> Any:
        return base_pb.ConfigSchemaResponse(spec=CONFIG_SPEC)

    async def set_config(self, req: Any) -> Any:
        self.config = req.msgpack_config
        self.nomad_config = req.nomad_config if req.HasField("nomad_config") else None
        log("debug", "set config", api_version=req.plugin_api_version)
        return base_pb.SetConfigResponse()

    # -- driver ------------------------------------------------------------
    async def init(self, _: Any) -> Any:
        # Registered on purpose: grpclib's answer for an unregistered method
        # lacks content-type, which grpc-go reports as Unknown, not
        # Unimplemented (and Nomad tolerates only Unimplemented for Init).
        raise GRPCError(Status.UNIMPLEMENTED, "Init is not implemented")

    async def task_config_schema(self, _: Any) -> Any:
        return driver_pb.TaskConfigSchemaResponse(spec=TASK_SPEC)

    async def capabilities(self, _: Any) -> Any:
        caps = driver_pb.DriverCapabilities(
            send_signals=True, exec=True, fs_isolation=driver_pb.DriverCapabilities.IMAGE
        )
        return driver_pb.CapabilitiesResponse(capabilities=caps)

    async def fingerprint(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        if "FIXTURE_FINGERPRINTS" in os.environ:
            await self.scripted_fingerprints(stream)
            return
        min_port = self.nomad_config.driver.ClientMinPort if self.nomad_config is not None else 0
        await stream.send_message(
            driver_pb.FingerprintResponse(
                attributes={
                    "driver.fixture.config": attr_pb.Attribute(
                        string_val=base64.b64encode(self.config).decode()
                    ),
                    "driver.fixture.min_port": attr_pb.Attribute(int_val=min_port),
                },
                health=driver_pb.FingerprintResponse.HEALTHY,
                health_description="Healthy",
            )
        )
        await self.stop.wait()

    async def scripted_fingerprints(self, stream: Stream[Any, Any]) -> None:
        streams: list[list[Any]] = json.loads(os.environ["FIXTURE_FINGERPRINTS"])
        reports = streams[min(self.fingerprint_calls, len(streams) - 1)]
        self.fingerprint_calls += 1
        for report in reports:
            if report == "end":
                return
            await stream.send_message(
                driver_pb.FingerprintResponse(
                    attributes={key: attribute(value) for key, value in report.items()},
                    health=driver_pb.FingerprintResponse.HEALTHY,
                    health_description="Healthy",
                )
            )
        await self.stop.wait()

    async def task_events(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        while True:
            await stream.send_message(await self.events.get())

    async def start_task(self, req: Any) -> Any:
        task = req.task
        cfg: dict[str, Any] = msgspec.msgpack.decode(task.msgpack_driver_config)
        log("info", "starting task", task_id=task.id)
        if cfg["fail"]:
            log("warn", "refusing to start task", task_id=task.id)
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                "fixture told to fail",
                [recov_pb.RecoverableError(recoverable=True)],
            )
        for path, text in (
            (task.stdout_path, cfg["message"]),
            (task.stderr_path, "stderr of " + task.name),
        ):
            if path:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                os.write(fd, (text + "\n").encode())
                os.close(fd)
        self.tasks[task.id] = int(cfg["exit_code"])
        event = driver_pb.DriverTaskEvent(
            task_id=task.id, alloc_id=task.alloc_id, task_name=task.name, message="started"
        )
        event.timestamp.GetCurrentTime()
        self.events.put_nowait(event)
        handle = driver_pb.TaskHandle(
            version=1, config=task, state=driver_pb.RUNNING, driver_state=b"fixture"
        )
        return driver_pb.StartTaskResponse(handle=handle)

    def event(self, task_id: str, message: str) -> None:
        ev = driver_pb.DriverTaskEvent(task_id=task_id, message=message)
        ev.timestamp.GetCurrentTime()
        self.events.put_nowait(ev)

    async def stop_task(self, req: Any) -> Any:
        timeout = req.timeout.ToTimedelta().total_seconds()
        self.event(req.task_id, f"stop signal={req.signal!r} timeout={timeout}")
        return driver_pb.StopTaskResponse()

    async def signal_task(self, req: Any) -> Any:
        self.event(req.task_id, f"signal {req.signal}")
        return driver_pb.SignalTaskResponse()

    async def exec_task(self, req: Any) -> Any:
        return driver_pb.ExecTaskResponse(
            stdout=" ".join(req.command).encode(),
            stderr=b"err",
            result=driver_pb.ExitResult(exit_code=7),
        )

    async def task_stats(self, stream: Stream[Any, Any]) -> None:
        req: Any = await stream.recv_message()
        interval = req.collection_interval.ToTimedelta().total_seconds()
        while True:
            stats = driver_pb.TaskStats(id=req.task_id)
            stats.timestamp.GetCurrentTime()
            stats.agg_resource_usage.memory.rss = 1024
            await stream.send_message(driver_pb.TaskStatsResponse(stats=stats))
            await asyncio.sleep(interval)

    async def wait_task(self, req: Any) -> Any:
        if req.task_id not in self.tasks:
            raise GRPCError(Status.NOT_FOUND, "task not found for given id")
        return driver_pb.WaitTaskResponse(
            result=driver_pb.ExitResult(exit_code=self.tasks[req.task_id])
        )

    async def destroy_task(self, req: Any) -> Any:
        self.tasks.pop(req.task_id, None)
        return driver_pb.DestroyTaskResponse()

    async def recover_task(self, req: Any) -> Any:
        self.tasks.setdefault(req.handle.config.id, 0)
        return driver_pb.RecoverTaskResponse()

    async def exec_streaming(self, stream: Stream[Any, Any]) -> None:
        setup = await stream.recv_message()
        if setup is None or not setup.HasField("setup"):
            raise GRPCError(Status.INVALID_ARGUMENT, "first message should always be setup")
        op = driver_pb.ExecTaskStreamingIOOperation
        async for msg in stream:
            if msg.HasField("tty_size"):
                text = f"{msg.tty_size.height}x{msg.tty_size.width}\n".encode()
                await stream.send_message(driver_pb.ExecTaskStreamingResponse(stderr=op(data=text)))
            elif msg.HasField("stdin") and msg.stdin.close:
                break
            elif msg.HasField("stdin"):
                await stream.send_message(
                    driver_pb.ExecTaskStreamingResponse(stdout=op(data=msg.stdin.data.upper()))
                )
        await stream.send_message(driver_pb.ExecTaskStreamingResponse(stdout=op(close=True)))
        await stream.send_message(driver_pb.ExecTaskStreamingResponse(stderr=op(close=True)))
        await stream.send_message(
            driver_pb.ExecTaskStreamingResponse(
                exited=True, result=driver_pb.ExitResult(exit_code=len(setup.setup.command))
            )
        )

    # -- go-plugin -----------------------------------------------------------
    async def controller_shutdown(self, _: Any) -> Any:
        log("debug", "controller shutdown")
        if os.environ.get("FIXTURE_IGNORE_SHUTDOWN") != "1":
            asyncio.get_running_loop().call_later(0.05, self.stop.set)
        return ctl_pb.Empty()

    def __mapping__(self) -> Mapping[str, Handler]:
        b = "/hashicorp.nomad.plugins.base.proto.BasePlugin/"
        d = "/hashicorp.nomad.plugins.drivers.proto.Driver/"
        ss = Cardinality.UNARY_STREAM
        return {
            b + "PluginInfo": unary(
                self.plugin_info, base_pb.PluginInfoRequest, base_pb.PluginInfoResponse
            ),
            b + "ConfigSchema": unary(
                self.config_schema, base_pb.ConfigSchemaRequest, base_pb.ConfigSchemaResponse
            ),
            b + "SetConfig": unary(
                self.set_config, base_pb.SetConfigRequest, base_pb.SetConfigResponse
            ),
            d + "Init": unary(self.init, driver_pb.InitRequest, driver_pb.InitResponse),
            d + "TaskConfigSchema": unary(
                self.task_config_schema,
                driver_pb.TaskConfigSchemaRequest,
                driver_pb.TaskConfigSchemaResponse,
            ),
            d + "Capabilities": unary(
                self.capabilities, driver_pb.CapabilitiesRequest, driver_pb.CapabilitiesResponse
            ),
            d + "Fingerprint": Handler(
                self.fingerprint, ss, driver_pb.FingerprintRequest, driver_pb.FingerprintResponse
            ),
            d + "TaskEvents": Handler(
                self.task_events, ss, driver_pb.TaskEventsRequest, driver_pb.DriverTaskEvent
            ),
            d + "StartTask": unary(
                self.start_task, driver_pb.StartTaskRequest, driver_pb.StartTaskResponse
            ),
            d + "WaitTask": unary(
                self.wait_task, driver_pb.WaitTaskRequest, driver_pb.WaitTaskResponse
            ),
            d + "StopTask": unary(
                self.stop_task, driver_pb.StopTaskRequest, driver_pb.StopTaskResponse
            ),
            d + "SignalTask": unary(
                self.signal_task, driver_pb.SignalTaskRequest, driver_pb.SignalTaskResponse
            ),
            d + "ExecTask": unary(
                self.exec_task, driver_pb.ExecTaskRequest, driver_pb.ExecTaskResponse
            ),
            d + "TaskStats": Handler(
                self.task_stats, ss, driver_pb.TaskStatsRequest, driver_pb.TaskStatsResponse
            ),
            d + "DestroyTask": unary(
                self.destroy_task, driver_pb.DestroyTaskRequest, driver_pb.DestroyTaskResponse
            ),
            d + "RecoverTask": unary(
                self.recover_task, driver_pb.RecoverTaskRequest, driver_pb.RecoverTaskResponse
            ),
            d + "ExecTaskStreaming": Handler(
                self.exec_streaming,
                Cardinality.STREAM_STREAM,
                driver_pb.ExecTaskStreamingRequest,
                driver_pb.ExecTaskStreamingResponse,
            ),
            "/plugin.GRPCController/Shutdown": unary(
                self.controller_shutdown, ctl_pb.Empty, ctl_pb.Empty
            ),
        }


async def main() -> None:
    fixture = Fixture()
    server = Server([fixture], status_details_codec=StatusDetails())
    sock_dir = tempfile.mkdtemp(prefix="fixture-")
    sock = os.path.join(sock_dir, "plugin.sock")
    await server.start(path=sock)
    sys.stdout.write(f"1|2|unix|{sock}|grpc|\n")
    sys.stdout.flush()
    os.dup2(2, 1)
    log("info", "fixture plugin serving", socket=sock)
    await fixture.stop.wait()
    server.close()
    os.unlink(sock)
    os.rmdir(sock_dir)


if __name__ == "__main__":
    if os.environ.get(COOKIE_KEY) != COOKIE_VALUE:
        sys.stderr.write("This binary is a plugin. It is meant to be executed by Nomad.\n")
        sys.exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(main())
    os._exit(0)
