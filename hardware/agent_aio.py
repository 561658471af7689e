"""The console's asyncio client for the agents' long-lived streams (WatchHealth, WatchBoot).

`AgentClient` (sync) holds a thread per open stream; a watcher following every server's health
and boot streams cannot afford that at a thousand servers. `AsyncAgentStreams` follows them on
one event loop with grpc.aio:

* ONE channel (so one HTTP/2 connection) per agent endpoint, shared by every node behind it: a
  multiplexing server (the simulated fleet) serves many nodes on one endpoint, and each call
  routes with the `x-gpuconsole-node` metadata key, exactly as `AgentClient(node=...)` does.
* the same security as the sync client (`channel_security`: mTLS from a `TlsIdentity` or
  explicit `insecure=True`), the same conversions (`hardware.agent.convert`) and the same status
  code to exception mapping (`hardware.agent.status`); results are `hardware.types` dataclasses.
* a deadline on every stream (`WATCH_TIMEOUT_S`; the caller re-subscribes after it), a shorter
  one for the agent to acknowledge the subscription (`open_timeout`), and client keep-alives so a
  dead agent ends its streams instead of leaving them hanging until the deadline.
* no retries inside: a stream that fails raises the domain exception and the caller (usually
  `hardware.stream_supervisor.StreamSupervisor`) decides when to open it again.

    streams = AsyncAgentStreams(credentials=TlsIdentity.from_dir(...))
    async for event in streams.watch_health("10.0.0.5:7443", "gpu-0001"):
        ...
    await streams.close()

Cancelling the task that iterates, breaking out of `async for`, `stream.cancel()` or
`await stream.aclose()` all cancel the call (the agent sees the client go away and closes its
subscription). Create and use an `AsyncAgentStreams` on one event loop: grpc.aio channels belong
to the loop they were made on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

import grpc
import grpc.aio

from hardware.agent import convert
from hardware.agent.routing import NODE_METADATA_KEY
from hardware.agent.servicer import STREAM_READY_KEY
from hardware.agent.status import exception_at, exception_for_rpc
from hardware.agent_client import DEFAULT_TIMEOUT_S, WATCH_TIMEOUT_S, channel_security
from hardware.exceptions import AgentTimeout, HardwareError
from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2 as pb
from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2_grpc
from hardware.tls import TlsIdentity
from hardware.types import BootPhaseEvent, HealthEvent

T = TypeVar("T")

# Long streams sit idle for hours: ping so a dead agent (or a dropped NAT entry) is noticed. The
# agent's server allows pings every 10 s (hardware/agent/server.py), so 30 s is well within it.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


class AioAgentStream(AsyncIterator[T], Generic[T]):
    """One server stream as an async iterator of dataclasses.

    The call starts on the first `ready()` or `__anext__()`. `await ready()` returns once the agent
    has subscribed (it sends its initial metadata then), so every event after it is delivered.
    Ends (StopAsyncIteration) when the agent closes the stream or after `cancel()`; any other end
    raises the mapped `HardwareError`. Unlike the sync `AgentStream`, a CANCELLED status this
    side did not ask for is an error, not a quiet end: a supervisor must re-open that stream.
    """

    def __init__(
        self, open_call: Callable[[], grpc.aio.UnaryStreamCall], to_type: Callable, where: str, open_timeout: float
    ) -> None:
        self._open, self._to_type, self.where, self._open_timeout = open_call, to_type, where, open_timeout
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._cancelled = False
        self._ended = False

    def _started(self) -> grpc.aio.UnaryStreamCall:
        if self._call is None:
            self._call = self._open()
        return self._call

    def _error(self, exc: grpc.RpcError) -> HardwareError:
        return exception_for_rpc(exc, self.where)

    async def ready(self) -> None:
        """Open the call and wait until the agent has subscribed (or `open_timeout` passes)."""
        call = self._started()
        try:
            metadata = await asyncio.wait_for(call.initial_metadata(), self._open_timeout)
            if not any(key == STREAM_READY_KEY for key, _ in metadata or ()):
                # Refused before subscribing (unknown node or VM): the status follows at once.
                code = await call.code()
                if code != grpc.StatusCode.OK and not self._cancelled:
                    raise exception_at(self.where, code, await call.details() or "")
        except TimeoutError:
            call.cancel()
            message = f"the agent did not open the stream within {self._open_timeout:g} s"
            raise AgentTimeout(f"{self.where}: {message}") from None
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            raise self._error(exc) from None
        except asyncio.CancelledError:
            call.cancel()
            if self._cancelled and not _task_cancelling():
                return  # cancel() while opening: iterating then ends at once
            raise

    async def __anext__(self) -> T:
        if self._ended or self._cancelled:
            raise StopAsyncIteration
        call = self._started()
        try:
            message = await call.read()
        except asyncio.CancelledError:
            call.cancel()
            if self._cancelled and not _task_cancelling():
                self._ended = True
                raise StopAsyncIteration from None
            raise
        except grpc.RpcError as exc:
            self._ended = True
            if self._cancelled:
                raise StopAsyncIteration from None
            raise self._error(exc) from None
        if message is grpc.aio.EOF:
            self._ended = True
            raise StopAsyncIteration
        return self._to_type(message)

    def cancel(self) -> None:
        """End the stream (idempotent); the iteration then stops quietly."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        self.cancel()


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class AsyncAgentStreams:
    """Health and boot streams of many agents, one grpc.aio channel per endpoint.

    `credentials` (TlsIdentity or grpc.ChannelCredentials) or, explicitly, `insecure=True`, as for
    `AgentClient`. `node` is the agent's hostname: sent as `x-gpuconsole-node` so a multiplexing
    endpoint routes the call (a single-host agent checks it names its host); None only for a
    fleet-wide health watch on a multiplexing endpoint.
    """

    def __init__(
        self,
        *,
        credentials: TlsIdentity | grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        server_name: str | None = None,
        timeout: float = WATCH_TIMEOUT_S,
        open_timeout: float = DEFAULT_TIMEOUT_S,
        options: tuple[tuple[str, object], ...] = CHANNEL_OPTIONS,
    ) -> None:
        self._creds, extra = channel_security(credentials, insecure=insecure, server_name=server_name)
        self._options = [*options, *extra]
        self.timeout, self.open_timeout = timeout, open_timeout
        self._stubs: dict[str, tuple[grpc.aio.Channel, agent_pb2_grpc.NodeAgentStub]] = {}

    @property
    def endpoints(self) -> list[str]:
        """Endpoints with an open channel (one each, whatever the number of nodes behind it)."""
        return list(self._stubs)

    def _stub(self, endpoint: str) -> agent_pb2_grpc.NodeAgentStub:
        entry = self._stubs.get(endpoint)
        if entry is None:
            if self._creds is not None:
                channel = grpc.aio.secure_channel(endpoint, self._creds, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            entry = self._stubs[endpoint] = (channel, agent_pb2_grpc.NodeAgentStub(channel))
        return entry[1]

    def _stream(self, endpoint: str, node: str | None, method: str, request, to_type, timeout) -> AioAgentStream:
        stub = self._stub(endpoint)
        metadata = ((NODE_METADATA_KEY, node),) if node else ()
        deadline = timeout or self.timeout
        where = f"{node}@{endpoint}" if node else endpoint
        return AioAgentStream(
            lambda: getattr(stub, method)(request, timeout=deadline, metadata=metadata),
            to_type,
            where,
            self.open_timeout,
        )

    def watch_health(
        self, endpoint: str, node: str | None, *, timeout: float | None = None
    ) -> AioAgentStream[HealthEvent]:
        """Health events of `node` (Xid, ECC, thermal, NVLink, fabric-manager restarts)."""
        return self._stream(endpoint, node, "WatchHealth", pb.WatchHealthRequest(), convert.health_from_pb, timeout)

    def watch_boot(
        self, endpoint: str, node: str | None, vm_id: str, *, timeout: float | None = None
    ) -> AioAgentStream[BootPhaseEvent]:
        """The VM's boot phases in order, each when it ends; the stream ends after the final one.

        A re-opened stream replays the phases already passed: record them idempotently.
        """
        request = pb.WatchBootRequest(vm_id=vm_id)
        return self._stream(endpoint, node, "WatchBoot", request, convert.boot_from_pb, timeout)

    async def close(self, grace: float | None = None) -> None:
        """Close every channel (cancels their open streams)."""
        stubs, self._stubs = self._stubs, {}
        await asyncio.gather(*(channel.close(grace) for channel, _ in stubs.values()), return_exceptions=True)

    async def __aenter__(self) -> AsyncAgentStreams:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
