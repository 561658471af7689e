"""One table between hardware.exceptions and gRPC status codes, used by both server and client.

The fabric manager's "in use" refusal travels as FAILED_PRECONDITION with a message starting
"in use", so the client can raise the narrower PartitionInUse.
"""

from __future__ import annotations

import grpc

from hardware.exceptions import (
    AgentTimeout,
    AgentUnavailable,
    FabricManagerVersionMismatch,
    FailedPrecondition,
    GpuBusy,
    HardwareError,
    InvalidArgument,
    NotFound,
    PartitionInUse,
    PermissionDenied,
)

IN_USE_PREFIX = "in use"
VERSION_MISMATCH_PREFIX = "version mismatch"

# Most specific first: the first matching class decides the code.
_EXCEPTION_TO_CODE: tuple[tuple[type[HardwareError], grpc.StatusCode], ...] = (
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (AgentTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (AgentUnavailable, grpc.StatusCode.UNAVAILABLE),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (GpuBusy, grpc.StatusCode.ABORTED),  # gRPC's "a concurrency conflict: retry at a higher level"
)

_CODE_TO_EXCEPTION: dict[grpc.StatusCode, type[HardwareError]] = {
    grpc.StatusCode.UNAVAILABLE: AgentUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: AgentTimeout,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: GpuBusy,
    grpc.StatusCode.ALREADY_EXISTS: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def code_for(exc: HardwareError) -> grpc.StatusCode:
    for cls, code in _EXCEPTION_TO_CODE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def exception_for(code: grpc.StatusCode, message: str) -> HardwareError:
    """The domain exception a client raises for a gRPC status."""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        if message.startswith(IN_USE_PREFIX):
            return PartitionInUse(message)
        if message.startswith(VERSION_MISMATCH_PREFIX):
            return FabricManagerVersionMismatch(message)
    cls = _CODE_TO_EXCEPTION.get(code, HardwareError)
    return cls(f"{code.name}: {message}" if cls is HardwareError else message)


def exception_at(where: str, code: grpc.StatusCode, message: str) -> HardwareError:
    """`exception_for`, its message prefixed with where the call went (`node@endpoint`)."""
    mapped = exception_for(code, message)
    mapped.args = (f"{where}: {mapped.args[0] if mapped.args else ''}",)
    return mapped


def exception_for_rpc(exc: grpc.RpcError, where: str) -> HardwareError:
    """The domain exception for a failed call (sync or grpc.aio)."""
    return exception_at(where, exc.code(), exc.details() or "")
