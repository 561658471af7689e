"""The console's client for node agents (NodeAgent) and, in development, the simulator (SimAdmin).

Every call has a deadline; UNAVAILABLE is retried a bounded number of times with exponential
backoff (a restarting fabric manager or a briefly unreachable node); gRPC status codes become
`hardware.exceptions`; results are frozen dataclasses from `hardware.types`, never protobuf.
mTLS by default: pass `credentials` (a TlsIdentity or grpc.ChannelCredentials) or, explicitly,
`insecure=True`. With `node=` every call carries `x-gpuconsole-node` so one multiplexing server
(the simulated fleet) can route it.

A retried mutation may have reached the agent before the connection broke: callers treat "in
use" after a retry as possibly their own activation (reconcile by listing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import grpc

from hardware.agent import convert
from hardware.agent.routing import NODE_METADATA_KEY
from hardware.agent.status import exception_for_rpc
from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2 as pb
from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2_grpc
from hardware.proto.gen.gpuconsole.simulator.v1 import simadmin_pb2 as simpb
from hardware.proto.gen.gpuconsole.simulator.v1 import simadmin_pb2_grpc
from hardware.tls import TlsIdentity
from hardware.types import (
    BootPhaseEvent,
    ClockInfo,
    FirmwareStatus,
    GpuHolder,
    GpuLeaseBinding,
    HealthEvent,
    Inventory,
    PartitionInfo,
    ScrubProgress,
    VmInfo,
)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
LONG_TIMEOUT_S = 600.0  # firmware flash, GPU reset, scrub: minutes on real hardware
EVICT_TIMEOUT_S = 120.0  # the agent's SIGTERM grace and bounded wait for the device to be let go
WATCH_TIMEOUT_S = 3600.0  # long-lived streams: the caller re-subscribes after this
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.2
MAX_BACKOFF_S = 2.0


def channel_security(
    credentials: TlsIdentity | grpc.ChannelCredentials | None,
    *,
    insecure: bool = False,
    server_name: str | None = None,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    """Channel credentials (None: plaintext, only with `insecure=True`) and options, for sync and aio channels."""
    if credentials is None:
        if not insecure:
            raise ValueError("mTLS credentials required; pass insecure=True for a plaintext channel")
        return None, []
    creds = credentials.channel_credentials() if isinstance(credentials, TlsIdentity) else credentials
    return creds, [("grpc.ssl_target_name_override", server_name)] if server_name else []


class AgentStream(Iterator[T], Generic[T]):
    """A server stream as an iterator of dataclasses; `cancel()` (any thread) ends it quietly."""

    def __init__(
        self,
        client: _GrpcClient,
        open_call: Callable[[], grpc.Call],
        to_type: Callable,
        *,
        eager: bool = False,
    ) -> None:
        self._client, self._open, self._to_type = client, open_call, to_type
        self._call = None
        self._cancelled = threading.Event()
        if eager:
            # The server sends its initial metadata once it has subscribed, so events that happen
            # after this returns are not missed.
            self._call = self._open()
            self._call.initial_metadata()
        self._items = self._iterate()

    def _iterate(self) -> Iterator[T]:
        received = False
        attempt = 0
        while True:
            if self._call is None:
                self._call = self._open()
            if self._cancelled.is_set():
                self._call.cancel()
            try:
                for message in self._call:
                    received = True
                    yield self._to_type(message)
                return
            except grpc.RpcError as exc:
                if self._cancelled.is_set() or exc.code() == grpc.StatusCode.CANCELLED:
                    return
                # Retry only a stream that never got going: a broken one may have done work.
                if received or not self._client._should_retry(exc, attempt):
                    raise self._client._mapped(exc) from None
                self._client._sleep_backoff(attempt)
                attempt += 1
                self._call = None

    def __next__(self) -> T:
        return next(self._items)

    def cancel(self) -> None:
        self._cancelled.set()
        if self._call is not None:
            self._call.cancel()


class _GrpcClient:
    def __init__(
        self,
        endpoint: str,
        *,
        credentials: TlsIdentity | grpc.ChannelCredentials | None = None,
        insecure: bool = False,
        node: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        server_name: str | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.endpoint, self.node, self.timeout = endpoint, node, timeout
        self.retries, self.backoff = retries, backoff
        self._metadata = ((NODE_METADATA_KEY, node),) if node else ()
        self._owns_channel = channel is None
        if channel is not None:
            self._channel = channel
        else:
            creds, options = channel_security(credentials, insecure=insecure, server_name=server_name)
            if creds is not None:
                self._channel = grpc.secure_channel(endpoint, creds, options=options)
            else:
                self._channel = grpc.insecure_channel(endpoint, options=options)

    # -- plumbing ----------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.node}@{self.endpoint}" if self.node else self.endpoint

    def _mapped(self, exc: grpc.RpcError) -> Exception:
        return exception_for_rpc(exc, self._where())

    def _should_retry(self, exc: grpc.RpcError, attempt: int) -> bool:
        return exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries

    def _sleep_backoff(self, attempt: int) -> None:
        time.sleep(min(self.backoff * 2**attempt, MAX_BACKOFF_S))

    def _unary(self, method, request, timeout: float | None = None):
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                if not self._should_retry(exc, attempt):
                    raise self._mapped(exc) from None
                self._sleep_backoff(attempt)
                attempt += 1

    def _stream(self, method, request, to_type: Callable, timeout: float, *, eager: bool = False) -> AgentStream:
        return AgentStream(
            self, lambda: method(request, timeout=timeout, metadata=self._metadata), to_type, eager=eager
        )

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AgentClient(_GrpcClient):
    """NodeAgent calls. `AgentClient("10.0.0.5:7443", credentials=TlsIdentity.from_dir(...))`."""

    def __init__(self, endpoint: str, **kwargs) -> None:
        super().__init__(endpoint, **kwargs)
        self._stub = agent_pb2_grpc.NodeAgentStub(self._channel)

    def get_inventory(self) -> Inventory:
        return convert.inventory_from_pb(self._unary(self._stub.GetInventory, pb.GetInventoryRequest()))

    def bind_vfio(self, address: str) -> None:
        self._unary(self._stub.BindVfio, pb.PciAddressRequest(address=address))

    def unbind_vfio(self, address: str) -> None:
        self._unary(self._stub.UnbindVfio, pb.PciAddressRequest(address=address))

    def list_partitions(self) -> list[PartitionInfo]:
        response = self._unary(self._stub.ListPartitions, pb.ListPartitionsRequest())
        return [convert.partition_from_pb(p) for p in response.partitions]

    def activate_partition(self, partition_id: int) -> None:
        self._unary(self._stub.ActivatePartition, pb.PartitionRequest(partition_id=partition_id))

    def deactivate_partition(self, partition_id: int) -> None:
        self._unary(self._stub.DeactivatePartition, pb.PartitionRequest(partition_id=partition_id))

    def set_activated_partitions(self, partition_ids: Iterable[int]) -> None:
        request = pb.SetActivatedPartitionsRequest(partition_ids=list(partition_ids))
        self._unary(self._stub.SetActivatedPartitions, request)

    def scrub_gpu(self, module_id: int, *, timeout: float = LONG_TIMEOUT_S) -> AgentStream[ScrubProgress]:
        request = pb.GpuRequest(module_id=module_id)
        return self._stream(self._stub.ScrubGpu, request, convert.scrub_from_pb, timeout)

    def check_firmware(self, module_id: int) -> FirmwareStatus:
        return convert.firmware_from_pb(self._unary(self._stub.CheckFirmware, pb.GpuRequest(module_id=module_id)))

    def level_firmware(self, module_id: int, *, timeout: float = LONG_TIMEOUT_S) -> FirmwareStatus:
        response = self._unary(self._stub.LevelFirmware, pb.GpuRequest(module_id=module_id), timeout)
        return convert.firmware_from_pb(response)

    def reset_gpu(self, module_id: int, *, timeout: float = LONG_TIMEOUT_S) -> None:
        self._unary(self._stub.ResetGpu, pb.GpuRequest(module_id=module_id), timeout)

    def gpu_holders(self, module_id: int) -> tuple[GpuHolder, ...]:
        """The processes holding the GPU's VFIO device open (by pid): a VM a teardown left behind.

        Empty when nothing holds it. NotFound for an unknown GPU.
        """
        response = self._unary(self._stub.ListGpuHolders, pb.GpuRequest(module_id=module_id))
        return convert.gpu_holders_from_pb(response)

    def evict_gpu_holders(self, module_id: int, *, timeout: float = EVICT_TIMEOUT_S) -> tuple[GpuHolder, ...]:
        """Have the agent tear down whatever holds the GPU's VFIO device; returns who was evicted.

        Idempotent: nothing holding it answers (). FailedPrecondition when the device is still
        held after the agent's bounded wait; NotFound for an unknown GPU.
        """
        response = self._unary(self._stub.EvictGpuHolders, pb.GpuRequest(module_id=module_id), timeout)
        return convert.gpu_holders_from_pb(response)

    def watch_health(self, *, timeout: float = WATCH_TIMEOUT_S) -> AgentStream[HealthEvent]:
        """Health events of this node (or, on a multiplexed server without `node=`, of every host).

        Returns once the agent has subscribed: every event after that is delivered.
        """
        request = pb.WatchHealthRequest()
        return self._stream(self._stub.WatchHealth, request, convert.health_from_pb, timeout, eager=True)

    def watch_boot(self, vm_id: str, *, timeout: float = WATCH_TIMEOUT_S) -> AgentStream[BootPhaseEvent]:
        return self._stream(self._stub.WatchBoot, pb.WatchBootRequest(vm_id=vm_id), convert.boot_from_pb, timeout)

    def set_gpu_leases(self, leases: Iterable[GpuLeaseBinding]) -> None:
        """Tell the agent the complete set of GPU leases on its node now (level-based, idempotent).

        Leases not named are forgotten; its device plugin then allocates a GPU only to a lease in
        an allocatable phase. `set_gpu_leases([])` clears the node. Raises InvalidArgument for an
        empty or repeated lease id or a GPU in two leases.
        """
        request = pb.SetGpuLeasesRequest(leases=[convert.gpu_lease_to_pb(b) for b in leases])
        self._unary(self._stub.SetGpuLeases, request)

    def list_gpu_leases(self) -> list[GpuLeaseBinding]:
        """The leases the agent holds now, by lease id."""
        response = self._unary(self._stub.ListGpuLeases, pb.ListGpuLeasesRequest())
        return [convert.gpu_lease_from_pb(m) for m in response.leases]

    def sim_admin(self, *, timeout: float | None = None, retries: int | None = None) -> SimAdminClient:
        """A SimAdmin client on this client's channel and node (simulated agents only)."""
        return SimAdminClient(
            self.endpoint,
            node=self.node,
            timeout=self.timeout if timeout is None else timeout,
            retries=self.retries if retries is None else retries,
            backoff=self.backoff,
            channel=self._channel,
        )


class SimAdminClient(_GrpcClient):
    """The simulator's controls: faults, VMs (kubelet + Kata stand-in), firmware, fabric manager, clock."""

    def __init__(self, endpoint: str, **kwargs) -> None:
        super().__init__(endpoint, **kwargs)
        self._stub = simadmin_pb2_grpc.SimAdminStub(self._channel)

    def _inject(self, **fields) -> None:
        self._unary(self._stub.InjectFault, simpb.InjectFaultRequest(**fields))

    def inject_xid(self, module_id: int, xid: int) -> None:
        self._inject(module_id=module_id, kind=simpb.FAULT_KIND_XID, xid=xid)

    def inject_thermal(self, module_id: int, temperature_c: float = 0.0) -> None:
        self._inject(module_id=module_id, kind=simpb.FAULT_KIND_THERMAL, temperature_c=temperature_c)

    def inject_nvlink(self, module_id: int, count: int = 1) -> None:
        self._inject(module_id=module_id, kind=simpb.FAULT_KIND_NVLINK, count=count)

    def fail_next_scrub(self, module_id: int) -> None:
        self._inject(module_id=module_id, kind=simpb.FAULT_KIND_SCRUB_FAILURE)

    def start_vm(
        self,
        vm_id: str,
        *,
        pod_name: str,
        gpu_module_ids: Iterable[int],
        guest_ram_gib: int,
        workload_seconds: float = 0.0,
    ) -> VmInfo:
        request = simpb.StartVmRequest(
            vm_id=vm_id,
            pod_name=pod_name,
            gpu_module_ids=list(gpu_module_ids),
            guest_ram_gib=guest_ram_gib,
            workload_seconds=workload_seconds,
        )
        return convert.vm_from_pb(self._unary(self._stub.StartVm, request))

    def stop_vm(self, vm_id: str) -> VmInfo:
        return convert.vm_from_pb(self._unary(self._stub.StopVm, simpb.VmRequest(vm_id=vm_id)))

    def get_vm(self, vm_id: str) -> VmInfo:
        return convert.vm_from_pb(self._unary(self._stub.GetVm, simpb.VmRequest(vm_id=vm_id)))

    def list_vms(self) -> list[VmInfo]:
        return [convert.vm_from_pb(v) for v in self._unary(self._stub.ListVms, simpb.ListVmsRequest()).vms]

    def flash_firmware(self, module_id: int, version: str) -> None:
        self._unary(self._stub.FlashFirmware, simpb.FlashFirmwareRequest(module_id=module_id, version=version))

    def restart_fabric_manager(self) -> None:
        self._unary(self._stub.RestartFabricManager, simpb.RestartFabricManagerRequest())

    def reboot_host(self) -> None:
        self._unary(self._stub.RebootHost, simpb.RebootHostRequest())

    def set_clock(self, *, acceleration: float = 0.0, advance_seconds: float = 0.0) -> ClockInfo:
        request = simpb.SetClockRequest(acceleration=acceleration, advance_seconds=advance_seconds)
        return convert.clock_from_pb(self._unary(self._stub.SetClock, request))

    def get_clock(self) -> ClockInfo:
        return convert.clock_from_pb(self._unary(self._stub.GetClock, simpb.GetClockRequest()))

    def set_agent(self, *, up: bool) -> bool:
        """Take the host's node agent down or bring it up (NodeAgent answers UNAVAILABLE while down)."""
        return self._unary(self._stub.SetAgent, simpb.SetAgentRequest(up=up)).up

    def agent_up(self) -> bool:
        return self._unary(self._stub.GetAgent, simpb.GetAgentRequest()).up
