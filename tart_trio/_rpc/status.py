"""Domain errors to gRPC status, in one place.

Never UNAVAILABLE or CANCELLED for an application error: Nomad reads those as a dead
plugin. A RecoverableError travels as ``details[0]`` so Nomad's restart policy applies.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message
from grpclib.const import Status
from grpclib.encoding.base import StatusDetailsCodecBase
from grpclib.exceptions import GRPCError

from tart_trio._errors import ConfigError, RecoverableError, TartTrioError, TaskNotFound
from tart_trio._proto.google.rpc import status_pb2
from tart_trio._proto.hashicorp.nomad.plugins.shared.structs import recoverable_error_pb2

log = logging.getLogger("rpc")
P = ParamSpec("P")
R = TypeVar("R")


class StatusDetailsCodec(StatusDetailsCodecBase):
    """Encodes ``google.rpc.Status`` with protobuf ``Any`` details (grpc-status-details-bin)."""

    def encode(self, status: Status, message: str | None, details: Any) -> bytes:
        proto = status_pb2.Status(code=status.value, message=message or "")
        for detail in details or ():
            packed = any_pb2.Any()
            packed.Pack(detail)
            proto.details.append(packed)
        return proto.SerializeToString()

    def decode(self, status: Status, message: str | None, data: bytes) -> Sequence[Any]:
        return list(status_pb2.Status.FromString(data).details)


def to_grpc_error(exc: Exception) -> GRPCError:
    """The status Nomad should see for a domain exception."""
    if isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        return to_grpc_error(exc.exceptions[0])
    if isinstance(exc, GRPCError):
        return exc
    if isinstance(exc, ConfigError):
        return GRPCError(Status.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, TaskNotFound):
        return GRPCError(Status.NOT_FOUND, str(exc))
    if isinstance(exc, RecoverableError):
        detail: Message = recoverable_error_pb2.RecoverableError(recoverable=True)
        return GRPCError(Status.FAILED_PRECONDITION, str(exc), [detail])
    if isinstance(exc, TartTrioError):
        return GRPCError(Status.FAILED_PRECONDITION, str(exc))
    log.error("unexpected error", exc_info=exc)
    return GRPCError(Status.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def translate_errors(
    handler: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Decorate a service method so every domain exception leaves as one gRPC status."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except Exception as exc:
            raise to_grpc_error(exc) from exc

    return wrapper
