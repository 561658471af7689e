"""`SimulatedCluster`: the `hardware.cluster.Cluster` seam over the simulated hosts, in-process.

The running product does not use it: `manage.py simfleet` serves the simulated cluster over the
Kubernetes API (`simulator.kube_server`, pods through `simulator.kubelet`, which shares this
module's node access and VM-to-pod-phase mapping) and the console drives that with
`hardware.kube.KubernetesCluster`. This in-memory fake is for tests that want a cluster without HTTP.

Cluster-level state (namespaces, network policies, tenancies, GpuLeases, cordons) lives in memory.
Pods are backed by the simulated nodes, reached through an injected `nodes(node_name)` callable
returning an object with `start_vm` / `stop_vm` / `get_vm` / `list_vms` (SimAdmin's VM calls, as
`hardware.agent_client.SimAdminClient` has them; `sim_admin_nodes` builds that callable for a
`SimFleet`). Creating a pod plays the scheduler and kubelet + Kata: the VM is started on the node
with the pod's GPUs; the pod is Pending while the VM boots, Running once it is up, Succeeded when
its simulated workload ends, Failed when the VM fails or is stopped. Cordoned nodes get no new
VMs (their pods wait Pending, like unschedulable pods), drain stops the VMs through eviction.

Arguments are validated exactly as `KubernetesCluster` validates them, before anything changes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from hardware import kube_constants as kc
from hardware.cluster import (
    DrainReport,
    EvictionRefusal,
    GpuLeaseStatus,
    PodPhase,
    PodStatus,
    TenancyStatus,
    validate_lease_id,
    validate_node,
    validate_pod_request,
    validate_tenant,
)
from hardware.exceptions import ClusterConflict, ClusterError, FailedPrecondition, HardwareError
from hardware.types import VmInfo, VmState

HISTORY = 10_000  # pod events kept for watches that resume; older versions relist (like 410 Gone)


class SimNode(Protocol):
    """The VM calls of one simulated node (SimAdmin)."""

    def start_vm(self, vm_id: str, *, pod_name: str, gpu_module_ids: Iterable[int], guest_ram_gib: int,
                 workload_seconds: float = 0.0) -> VmInfo: ...

    def stop_vm(self, vm_id: str) -> VmInfo: ...

    def get_vm(self, vm_id: str) -> VmInfo: ...

    def list_vms(self) -> list[VmInfo]: ...


NodeAccess = Callable[[str], SimNode]


def sim_admin_nodes(endpoints: Mapping[str, Any], *, insecure: bool = True, **client_options: Any) -> NodeAccess:
    """Node access over SimAdmin gRPC for a `SimFleet`'s `endpoints` (node name → Endpoint).

    One client per node, created on first use; pass `credentials=` (and `insecure=False`) for mTLS.
    """
    from hardware.agent_client import SimAdminClient  # gRPC stubs load only when this is used

    clients: dict[str, SimAdminClient] = {}
    lock = threading.Lock()

    def node(name: str) -> SimNode:
        with lock:
            if name not in clients:
                endpoint = endpoints.get(name)
                if endpoint is None:
                    raise ClusterError(f"node {name!r} not found")
                clients[name] = SimAdminClient(endpoint.address, node=endpoint.node, insecure=insecure,
                                               **client_options)
            return clients[name]

    return node


@dataclass
class _Pod:
    lease_id: str
    tenant: str
    namespace: str
    name: str
    node: str
    image: str
    modules: tuple[int, ...]
    vm_id: str
    started: bool = False
    deleted: bool = False
    start_error: str = ""
    status: PodStatus | None = None


@dataclass
class _GpuLease:
    spec: dict[str, Any]
    phase: str = kc.GpuLeasePhase.RESERVED
    finalizers: list[str] = field(default_factory=lambda: [kc.GPULEASE_FINALIZER])
    deleting: bool = False

    def status(self) -> GpuLeaseStatus:
        return GpuLeaseStatus(
            lease_id=self.spec["leaseId"], node=self.spec["node"], tenant=self.spec["tenant"],
            pod=self.spec["pod"], gpu_module_ids=tuple(self.spec["gpuModuleIds"]),
            pci_addresses=tuple(self.spec["pciAddresses"]), phase=self.phase,
            finalized=kc.GPULEASE_FINALIZER not in self.finalizers, deleting=self.deleting,
        )


def phase_of_vm(vm: VmInfo) -> tuple[str, int | None, str]:
    """(pod phase, exit code, reason) for a VM state."""
    if vm.state is VmState.BOOTING:
        return PodPhase.PENDING, None, "ContainerCreating"
    if vm.state is VmState.RUNNING:
        return PodPhase.RUNNING, None, ""
    if vm.state is VmState.SUCCEEDED:
        return PodPhase.SUCCEEDED, 0, "Completed"
    if vm.state is VmState.STOPPED:
        return PodPhase.FAILED, 137, vm.detail or "Stopped"
    return PodPhase.FAILED, 1, vm.detail or "Error"


class SimulatedCluster:
    """An in-memory cluster whose pods run as VMs on simulated nodes."""

    def __init__(self, nodes: NodeAccess, *, node_names: Iterable[str] | None = None,
                 module_of: Callable[[str, int], int] = lambda node, index: index,
                 guest_ram_gib: int = 64, workload_seconds: float = 0.0, poll_interval: float = 0.05):
        self._nodes = nodes
        self._known = set(node_names) if node_names is not None else None
        self._module_of = module_of
        self._guest_ram_gib = guest_ram_gib
        self._workload_seconds = workload_seconds
        self._poll = poll_interval
        self._lock = threading.RLock()
        self.namespaces: dict[str, dict[str, str]] = {}  # name → labels
        self.policies: dict[str, dict[str, Any]] = {}  # namespace → CiliumNetworkPolicy spec
        self.tenancies: dict[str, TenancyStatus] = {}
        self.gpu_leases: dict[str, _GpuLease] = {}
        self.cordoned: set[str] = set()
        self.protected_pods: set[str] = set()  # "namespace/name": eviction refused, as a PDB would
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._events: list[PodStatus] = []
        self._rv = 0

    @classmethod
    def for_fleet(cls, fleet: Any, *, insecure: bool = True, client_options: Mapping[str, Any] | None = None,
                  **options: Any) -> SimulatedCluster:
        """The default wiring: a running `simulator.fleet.SimFleet`'s nodes over SimAdmin gRPC."""
        nodes = sim_admin_nodes(fleet.endpoints, insecure=insecure, **(client_options or {}))
        return cls(nodes, node_names=fleet.endpoints, **options)

    # -- tenancy ----------------------------------------------------------------------------
    def ensure_tenancy(self, name: str) -> TenancyStatus:
        validate_tenant(name)
        namespace = kc.tenant_namespace(name)
        with self._lock:
            labels = self.namespaces.setdefault(namespace, {})
            labels.update({kc.MANAGED_BY_LABEL: kc.MANAGED_BY, kc.TENANT_LABEL: name})
            peers = [{"matchLabels": {kc.CILIUM_NAMESPACE_LABEL: namespace}}]
            self.policies[namespace] = {"endpointSelector": {}, "ingress": [{"fromEndpoints": peers}],
                                        "egress": [{"toEndpoints": peers}]}
            status = self.tenancies.get(name)
            if status is None or not status.ready:
                status = TenancyStatus(name=name, namespace=namespace, phase=kc.TenancyPhase.READY, ready=True,
                                       conditions=(("Ready", "True", "NamespaceAndPolicyReady"),))
                self.tenancies[name] = status
            return status

    def get_tenancy(self, name: str) -> TenancyStatus | None:
        validate_tenant(name)
        with self._lock:
            return self.tenancies.get(name)

    def tenancy_drift(self, name: str) -> tuple[str, ...]:
        validate_tenant(name)
        namespace = kc.tenant_namespace(name)
        with self._lock:
            present = {"tenancy": name in self.tenancies, "namespace": namespace in self.namespaces,
                       "network policy": namespace in self.policies}
        return tuple(what for what, there in present.items() if not there)

    # -- pods -------------------------------------------------------------------------------
    def create_lease_pod(self, *, lease_id: str, tenant: str, image: str, node: str,
                         gpu_indexes: Sequence[int], command: Sequence[str] = (),
                         startup_timeout_s: int | None = None, predicted_boot_s: float | None = None,
                         env: Mapping[str, str] | None = None) -> PodStatus:
        """The in-memory runtime has no create-container timeout: `startup_timeout_s` and
        `predicted_boot_s` are accepted for the interface and not enforced (nor is `env`)."""
        lease_id, indexes = validate_pod_request(lease_id=lease_id, tenant=tenant, image=image, node=node,
                                                 gpu_indexes=gpu_indexes)
        self._check_node(node)
        namespace, name = kc.tenant_namespace(tenant), kc.lease_pod_name(lease_id)
        with self._lock:
            if namespace not in self.namespaces:
                raise ClusterError(f"create pod {namespace}/{name}: namespace {namespace} not found")
            existing = self._pods.get((namespace, name))
            if existing is not None and not existing.deleted:
                if existing.lease_id != lease_id:
                    raise ClusterConflict(f"pod {namespace}/{name} exists and is not lease {lease_id}'s")
                return self._status(existing)
            pod = _Pod(lease_id=lease_id, tenant=tenant, namespace=namespace, name=name, node=node, image=image,
                       modules=tuple(self._module_of(node, i) for i in indexes),
                       vm_id=kc.vm_id_for_pod(namespace, name))
            self._pods[(namespace, name)] = pod
            self._refresh_pod(pod)
            return self._status(pod)

    def get_lease_pod(self, *, lease_id: str, tenant: str) -> PodStatus | None:
        key = (kc.tenant_namespace(validate_tenant(tenant)), kc.lease_pod_name(validate_lease_id(lease_id)))
        with self._lock:
            pod = self._pods.get(key)
            if pod is None or pod.deleted:
                return None
            self._refresh_pod(pod)
            return self._status(pod)

    def delete_lease_pod(self, *, lease_id: str, tenant: str) -> None:
        key = (kc.tenant_namespace(validate_tenant(tenant)), kc.lease_pod_name(validate_lease_id(lease_id)))
        with self._lock:
            pod = self._pods.get(key)
            if pod is not None and not pod.deleted:
                self._refresh_pod(pod)  # what the kubelet reported before the delete
                self._remove(pod)

    def watch_lease_pods(self, resource_version: str | None = None,
                         timeout: float = 60.0) -> Iterator[PodStatus]:
        """Follow the simulated VMs; without a version (or with one too old) list first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._refresh()
            oldest = int(self._events[0].resource_version) if self._events else self._rv + 1
            since = int(resource_version) if resource_version else None
            if since is None or since < oldest - 1:
                listing = [self._status(p) for p in self._pods.values() if not p.deleted]
                since = self._rv
            else:
                listing = []
        yield from listing
        while True:
            with self._lock:
                self._refresh()
                pending = [e for e in self._events if int(e.resource_version) > since]
            for event in pending:
                since = int(event.resource_version)
                yield event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(self._poll, remaining))

    def _check_node(self, node: str) -> None:
        validate_node(node)
        if self._known is not None and node not in self._known:
            raise ClusterError(f"node {node!r} not found")

    def _status(self, pod: _Pod) -> PodStatus:
        assert pod.status is not None
        return pod.status

    def _refresh(self) -> None:
        for pod in list(self._pods.values()):
            if not pod.deleted:
                self._refresh_pod(pod)

    def _refresh_pod(self, pod: _Pod) -> None:
        """Start the VM when the node may take it, then read its state; record a change as an event."""
        phase, exit_code, reason = PodPhase.PENDING, None, ""
        if pod.start_error:
            phase, exit_code, reason = PodPhase.FAILED, 128, pod.start_error
        elif not pod.started and pod.node in self.cordoned:
            reason = "Unschedulable"
        else:
            try:
                node = self._nodes(pod.node)
                if not pod.started:
                    node.start_vm(pod.vm_id, pod_name=pod.name, gpu_module_ids=pod.modules,
                                  guest_ram_gib=self._guest_ram_gib, workload_seconds=self._workload_seconds)
                    pod.started = True
                phase, exit_code, reason = phase_of_vm(node.get_vm(pod.vm_id))
            except HardwareError as exc:
                if exc.retryable:
                    reason = "NodeUnreachable"  # kubelet would retry; so do we, next refresh
                else:
                    pod.start_error = f"StartError: {exc}"
                    phase, exit_code, reason = PodPhase.FAILED, 128, pod.start_error
        self._record(pod, phase, exit_code, reason)

    def _record(self, pod: _Pod, phase: str, exit_code: int | None, reason: str) -> None:
        current = pod.status
        if current is not None and (current.phase, current.exit_code, current.reason) == (phase, exit_code, reason):
            return
        self._rv += 1
        pod.status = PodStatus(name=pod.name, namespace=pod.namespace, node=pod.node if pod.started else "",
                               phase=phase, exit_code=exit_code, reason=reason, lease_id=pod.lease_id,
                               resource_version=str(self._rv))
        self._events.append(pod.status)
        del self._events[:-HISTORY]

    def _remove(self, pod: _Pod) -> None:
        if pod.started:
            with contextlib.suppress(HardwareError):  # VM gone or node away: the pod goes all the same
                self._nodes(pod.node).stop_vm(pod.vm_id)
        pod.deleted = True
        assert pod.status is not None
        self._rv += 1
        pod.status = replace(pod.status, phase=PodPhase.DELETED, resource_version=str(self._rv))
        self._events.append(pod.status)
        del self._events[:-HISTORY]

    # -- GpuLease ---------------------------------------------------------------------------
    def create_gpu_lease(self, *, lease_id: str, tenant: str, node: str, gpu_module_ids: Sequence[int],
                         pci_addresses: Sequence[str], pod: str) -> GpuLeaseStatus:
        lease_id, node = validate_lease_id(lease_id), validate_node(node)
        validate_tenant(tenant)
        name = kc.lease_pod_name(lease_id)
        with self._lock:
            if name not in self.gpu_leases:
                self.gpu_leases[name] = _GpuLease(spec={
                    "leaseId": lease_id, "tenant": tenant, "node": node, "pod": pod,
                    "gpuModuleIds": list(gpu_module_ids), "pciAddresses": list(pci_addresses)})
            return self.gpu_leases[name].status()

    def get_gpu_lease(self, lease_id: str) -> GpuLeaseStatus | None:
        with self._lock:
            lease = self.gpu_leases.get(kc.lease_pod_name(validate_lease_id(lease_id)))
            return lease.status() if lease else None

    def set_gpu_lease_phase(self, lease_id: str, phase: str) -> GpuLeaseStatus:
        if phase not in kc.GpuLeasePhase.ALL:
            raise ClusterError(f"unknown GpuLease phase {phase!r}")
        name = kc.lease_pod_name(validate_lease_id(lease_id))
        with self._lock:
            lease = self.gpu_leases.get(name)
            if lease is None:
                raise ClusterError(f"gpulease {name} not found")
            lease.phase = phase
            return lease.status()

    def delete_gpu_lease(self, lease_id: str) -> None:
        name = kc.lease_pod_name(validate_lease_id(lease_id))
        with self._lock:
            lease = self.gpu_leases.get(name)
            if lease is None:
                return
            if lease.finalizers:
                lease.deleting = True
            else:
                del self.gpu_leases[name]

    def finalize_gpu_lease(self, lease_id: str, *, levelled: bool) -> GpuLeaseStatus | None:
        name = kc.lease_pod_name(validate_lease_id(lease_id))
        if not levelled:
            raise FailedPrecondition(f"gpulease {name}: GPUs not scrubbed and levelled, finalizer stays")
        with self._lock:
            lease = self.gpu_leases.get(name)
            if lease is None:
                return None
            lease.finalizers = [f for f in lease.finalizers if f != kc.GPULEASE_FINALIZER]
            if lease.deleting and not lease.finalizers:
                del self.gpu_leases[name]
            return lease.status()

    # -- nodes ------------------------------------------------------------------------------
    def cordon(self, node: str) -> None:
        self._check_node(node)
        with self._lock:
            self.cordoned.add(node)

    def uncordon(self, node: str) -> None:
        self._check_node(node)
        with self._lock:
            self.cordoned.discard(node)
            self._refresh()  # pods waiting for the node start now

    def drain(self, node: str) -> DrainReport:
        """Cordon, then evict the node's running pods (stopping their VMs); protected pods refuse."""
        self.cordon(node)
        evicted: list[str] = []
        refused: list[EvictionRefusal] = []
        with self._lock:
            self._refresh()
            for pod in self._pods.values():
                if pod.deleted or pod.node != node or pod.status is None or pod.status.phase in PodPhase.TERMINAL:
                    continue
                key = f"{pod.namespace}/{pod.name}"
                if key in self.protected_pods:
                    refused.append(EvictionRefusal(pod=pod.name, namespace=pod.namespace, reason=(
                        "Cannot evict pod as it would violate the pod's disruption budget.")))
                    continue
                self._remove(pod)
                evicted.append(key)
        return DrainReport(node=node, evicted=tuple(evicted), refused=tuple(refused))
