"""Pure conversions between domain types and generated protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from tart_trio import _hclspec
from tart_trio._model import Capabilities, Fingerprint, PluginInfo, TaskEvent
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


def spec(node: _hclspec.Spec) -> hcl_spec_pb2.Spec:
    """An hclspec tree as the protobuf Nomad converts to hcldec."""
    match node:
        case _hclspec.Object(attributes=attributes):
            return hcl_spec_pb2.Spec(
                object=hcl_spec_pb2.Object(
                    attributes={name: spec(child) for name, child in attributes.items()}
                )
            )
        case _hclspec.Attr(name=name, type=type_, required=required):
            return hcl_spec_pb2.Spec(
                Attr=hcl_spec_pb2.Attr(name=name, type=type_, required=required)
            )
        case _hclspec.Default(primary=primary, default=default):
            return hcl_spec_pb2.Spec(
                default=hcl_spec_pb2.Default(primary=spec(primary), default=spec(default))
            )
        case _hclspec.Literal(value=value):
            return hcl_spec_pb2.Spec(literal=hcl_spec_pb2.Literal(value=value))
        case _hclspec.Block(name=name, nested=nested, required=required):
            return hcl_spec_pb2.Spec(
                block_value=hcl_spec_pb2.Block(name=name, required=required, nested=spec(nested))
            )
        case _hclspec.BlockList(name=name, nested=nested, min_items=lo, max_items=hi):
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
