"""Pure conversions between domain types and generated protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from google.protobuf import timestamp_pb2

from tart_trio._config import hclspec
from tart_trio._model import (
    Capabilities,
    ExecInput,
    ExecOutput,
    ExecStream,
    ExitResult,
    Fingerprint,
    NomadTask,
    PluginInfo,
    PortMapping,
    ProcessUsage,
    ResourceUsage,
    StdinClose,
    StdinData,
    TaskEnv,
    TaskEvent,
    TaskStatus,
    TerminalResize,
)
from tart_trio._proto.hashicorp.nomad.plugins.base import base_pb2
from tart_trio._proto.hashicorp.nomad.plugins.drivers import driver_pb2
from tart_trio._proto.hashicorp.nomad.plugins.shared.hclspec import hcl_spec_pb2
from tart_trio._proto.hashicorp.nomad.plugins.shared.structs import attribute_pb2

_FS_ISOLATION = {
    "none": driver_pb2.DriverCapabilities.NONE,
    "chroot": driver_pb2.DriverCapabilities.CHROOT,
    "image": driver_pb2.DriverCapabilities.IMAGE,
}
_NET_MODES = {
    "host": driver_pb2.NetworkIsolationSpec.HOST,
    "group": driver_pb2.NetworkIsolationSpec.GROUP,
    "task": driver_pb2.NetworkIsolationSpec.TASK,
    "none": driver_pb2.NetworkIsolationSpec.NONE,
}
_MOUNTS = {
    "any": driver_pb2.DriverCapabilities.ANY_MOUNTS,
    "none": driver_pb2.DriverCapabilities.NO_MOUNTS,
}
_HEALTH = {
    "undetected": driver_pb2.FingerprintResponse.UNDETECTED,
    "unhealthy": driver_pb2.FingerprintResponse.UNHEALTHY,
    "healthy": driver_pb2.FingerprintResponse.HEALTHY,
}


def spec(node: hclspec.Spec) -> hcl_spec_pb2.Spec:
    """An hclspec tree as the protobuf Nomad converts to hcldec."""
    match node:
        case hclspec.Object(attributes=attributes):
            return hcl_spec_pb2.Spec(
                object=hcl_spec_pb2.Object(
                    attributes={name: spec(child) for name, child in attributes.items()}
                )
            )
        case hclspec.Attr(name=name, type=type_, required=required):
            return hcl_spec_pb2.Spec(
                Attr=hcl_spec_pb2.Attr(name=name, type=type_, required=required)
            )
        case hclspec.Default(primary=primary, default=default):
            return hcl_spec_pb2.Spec(
                default=hcl_spec_pb2.Default(primary=spec(primary), default=spec(default))
            )
        case hclspec.Literal(value=value):
            return hcl_spec_pb2.Spec(literal=hcl_spec_pb2.Literal(value=value))
        case hclspec.Block(name=name, nested=nested, required=required):
            return hcl_spec_pb2.Spec(
                block_value=hcl_spec_pb2.Block(name=name, required=required, nested=spec(nested))
            )
        case hclspec.BlockList(name=name, nested=nested, min_items=lo, max_items=hi):
            return hcl_spec_pb2.Spec(
                block_list=hcl_spec_pb2.BlockList(
                    name=name, min_items=lo, max_items=hi, nested=spec(nested)
                )
            )
    raise TypeError(f"unknown spec node {node!r}")


def plugin_info(info: PluginInfo) -> base_pb2.PluginInfoResponse:
    """PluginInfo as Nomad reads it."""
    return base_pb2.PluginInfoResponse(
        type=base_pb2.DRIVER,
        plugin_api_versions=list(info.api_versions),
        plugin_version=info.version,
        name=info.name,
    )


def capabilities(caps: Capabilities) -> driver_pb2.CapabilitiesResponse:
    """Capabilities as Nomad reads them."""
    return driver_pb2.CapabilitiesResponse(
        capabilities=driver_pb2.DriverCapabilities(
            send_signals=caps.send_signals,
            exec=caps.exec,
            fs_isolation=_FS_ISOLATION[caps.fs_isolation],
            network_isolation_modes=[_NET_MODES[m] for m in caps.network_isolation_modes],
            must_create_network=caps.must_create_network,
            mount_configs=_MOUNTS[caps.mount_configs],
            disable_log_collection=caps.disable_log_collection,
            dynamic_workload_users=caps.dynamic_workload_users,
        )
    )


def attribute(value: object) -> attribute_pb2.Attribute:
    """One fingerprint attribute, typed as Nomad's Attribute oneof."""
    if isinstance(value, bool):
        return attribute_pb2.Attribute(bool_val=value)
    if isinstance(value, int):
        return attribute_pb2.Attribute(int_val=value)
    if isinstance(value, float):
        return attribute_pb2.Attribute(float_val=value)
    return attribute_pb2.Attribute(string_val=str(value))


def fingerprint(fp: Fingerprint) -> driver_pb2.FingerprintResponse:
    """A FingerprintResponse."""
    return driver_pb2.FingerprintResponse(
        attributes={key: attribute(value) for key, value in fp.attributes.items()},
        health=_HEALTH[fp.health],
        health_description=fp.description,
    )


def timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp (Nomad errors on a missing one)."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def task_event(event: TaskEvent) -> driver_pb2.DriverTaskEvent:
    """A DriverTaskEvent; Nomad routes it by alloc_id and task_name."""
    return driver_pb2.DriverTaskEvent(
        task_id=event.task_id,
        alloc_id=event.alloc_id,
        task_name=event.task_name,
        timestamp=timestamp(event.timestamp),
        message=event.message,
        annotations=dict(event.annotations),
    )


GO_ZERO_TIME = -62135596800  # Go's zero time.Time, what Go drivers send for "not yet"


def task_env(task: driver_pb2.TaskConfig) -> TaskEnv:
    """The task's environment, for a command in the guest (see TaskEnv: never printed)."""
    return TaskEnv(task.env)


def nomad_task(task: driver_pb2.TaskConfig) -> NomadTask:
    """The fields of Nomad's TaskConfig the driver uses (the env travels as a TaskEnv)."""
    resources = task.resources
    allocated = resources.allocated_resources
    return NomadTask(
        id=task.id,
        name=task.name,
        alloc_id=task.alloc_id,
        alloc_dir=task.alloc_dir,
        stdout_path=task.stdout_path,
        stderr_path=task.stderr_path,
        job_name=task.job_name,
        task_group_name=task.task_group_name,
        namespace=task.namespace,
        cpuset_cpus=resources.linux_resources.cpuset_cpus,
        cpu_shares=allocated.cpu.cpu_shares,
        memory_mb=allocated.memory.memory_mb,
        memory_max_mb=allocated.memory.memory_max_mb,
        user=task.user,
        percent_ticks=resources.linux_resources.PercentTicks,
        ports=tuple(
            PortMapping(label=port.label, value=port.value, to=port.to, host_ip=port.host_ip)
            for port in resources.ports
            if port.label
        ),
    )


def exit_result(result: ExitResult | None) -> driver_pb2.ExitResult:
    """An ExitResult (always present: Nomad dereferences it)."""
    if result is None:
        return driver_pb2.ExitResult()
    return driver_pb2.ExitResult(
        exit_code=result.exit_code, signal=result.signal, oom_killed=result.oom_killed
    )


def wait_response(result: ExitResult) -> driver_pb2.WaitTaskResponse:
    """WaitTask's answer; ``err`` only when the VM did not end by itself."""
    return driver_pb2.WaitTaskResponse(result=exit_result(result), err=result.err)


_PHASES = {
    "starting": driver_pb2.RUNNING,
    "running": driver_pb2.RUNNING,
    "exited": driver_pb2.EXITED,
}


def task_status(status: TaskStatus) -> driver_pb2.InspectTaskResponse:
    """InspectTask's answer with both timestamps set."""
    completed = (
        timestamp(status.completed_at)
        if status.completed_at is not None
        else timestamp_pb2.Timestamp(seconds=GO_ZERO_TIME)
    )
    return driver_pb2.InspectTaskResponse(
        task=driver_pb2.TaskStatus(
            id=status.id,
            name=status.name,
            state=_PHASES[status.phase],
            started_at=timestamp(status.started_at),
            completed_at=completed,
            result=exit_result(status.result),
        ),
        driver=driver_pb2.TaskDriverStatus(attributes=status.attributes),
    )


def _usage(usage: ProcessUsage) -> driver_pb2.TaskResourceUsage:
    measured = [driver_pb2.CPUUsage.PERCENT]
    if usage.cpu_mhz is not None:
        measured.append(driver_pb2.CPUUsage.TOTAL_TICKS)
    return driver_pb2.TaskResourceUsage(
        cpu=driver_pb2.CPUUsage(
            percent=usage.cpu_percent,
            total_ticks=usage.cpu_mhz or 0.0,
            measured_fields=measured,
        ),
        memory=driver_pb2.MemoryUsage(
            rss=usage.rss_bytes, measured_fields=[driver_pb2.MemoryUsage.RSS]
        ),
    )


def task_stats(task_id: str, usage: ResourceUsage) -> driver_pb2.TaskStatsResponse:
    """A TaskStats sample; timestamp and aggregate usage are always set."""
    return driver_pb2.TaskStatsResponse(
        stats=driver_pb2.TaskStats(
            id=task_id,
            timestamp=timestamp(usage.timestamp),
            agg_resource_usage=_usage(usage.total),
            resource_usage_by_pid={pid: _usage(one) for pid, one in usage.by_pid.items()},
        )
    )


def topology(driver: base_pb2.NomadDriverConfig) -> tuple[list[int], int] | None:
    """The cores' speeds (MHz, as Nomad's ``Core.MHz``) and the total-compute override of
    the topology Nomad 1.7+ sends with SetConfig; None when it sends none."""
    if not driver.HasField("Topology"):
        return None
    cores = [c.base_speed or c.max_speed or c.guess_speed for c in driver.Topology.cores]
    return cores, driver.Topology.override_total_compute


def start_response(
    request: driver_pb2.StartTaskRequest, driver_state: bytes, ip: str
) -> driver_pb2.StartTaskResponse:
    """The handle Nomad persists: the received TaskConfig echoed, version 1, RUNNING."""
    return driver_pb2.StartTaskResponse(
        result=driver_pb2.StartTaskResponse.SUCCESS,
        handle=driver_pb2.TaskHandle(
            version=1, config=request.task, state=driver_pb2.RUNNING, driver_state=driver_state
        ),
        network_override=driver_pb2.NetworkOverride(
            addr=ip, port_map=port_map(request.task.resources.ports), auto_advertise=False
        ),
    )


def port_map(ports: Iterable[driver_pb2.PortMapping]) -> dict[str, int]:
    """The DriverNetwork: the job's port labels as the VM sees them (``to``, else the host
    port, where the task option ``ports`` forwards them).

    ``auto_advertise`` stays false, as Docker's default bridge: services and checks in the
    default address mode use the host's ``host_ip:value``, which the forward serves. With
    ``address_mode = "driver"`` Nomad registers the VM's address with a group port's ``to``
    (this map only names ports that are not the group's).
    """
    return {port.label: port.to if port.to > 0 else port.value for port in ports if port.label}


def exec_response(output: ExecOutput) -> driver_pb2.ExecTaskResponse:
    """ExecTask's answer; ``result`` is always set (Nomad dereferences it)."""
    return driver_pb2.ExecTaskResponse(
        stdout=output.stdout, stderr=output.stderr, result=exit_result(output.result)
    )


def exec_input(request: driver_pb2.ExecTaskStreamingRequest) -> ExecInput | None:
    """One client message of an exec stream after the setup; ``None`` for a heartbeat."""
    if request.HasField("stdin"):
        if request.stdin.close:
            return StdinClose()
        return StdinData(request.stdin.data) if request.stdin.data else None
    if request.HasField("tty_size"):
        return TerminalResize(width=request.tty_size.width, height=request.tty_size.height)
    return None


def exec_output(stream: ExecStream, data: bytes) -> driver_pb2.ExecTaskStreamingResponse:
    """Output bytes of an exec stream."""
    chunk = driver_pb2.ExecTaskStreamingIOOperation(data=data)
    if stream == "stdout":
        return driver_pb2.ExecTaskStreamingResponse(stdout=chunk)
    return driver_pb2.ExecTaskStreamingResponse(stderr=chunk)


def exec_end(result: ExitResult) -> list[driver_pb2.ExecTaskStreamingResponse]:
    """The end of an exec stream: stdout and stderr closed, then ``exited`` with the result."""
    closed = driver_pb2.ExecTaskStreamingIOOperation(close=True)
    return [
        driver_pb2.ExecTaskStreamingResponse(stdout=closed),
        driver_pb2.ExecTaskStreamingResponse(stderr=closed),
        driver_pb2.ExecTaskStreamingResponse(exited=True, result=exit_result(result)),
    ]
