"""The cluster seam: what the console asks of Kubernetes, and the frozen values it gets back.

`hardware.kube.KubernetesCluster` implements `Cluster` against an API server: a real one, or the
simulated cluster's (`simulator.kube_server`, served by `manage.py simfleet`);
`simulator.cluster.SimulatedCluster` implements it in-process over the simulated hosts, for tests.
Both validate their arguments with the helpers at the bottom before touching anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from hardware import kube_constants as kc
from hardware.exceptions import InvalidArgument
from hardware.oci import parse_image_reference

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL_MAX = 63


class PodPhase:
    """Kubernetes pod phases."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"
    DELETED = "Deleted"  # not a Kubernetes phase: the watch saw the pod go away

    TERMINAL = frozenset({SUCCEEDED, FAILED, DELETED})


@dataclass(frozen=True)
class PodStatus:
    """One observation of a lease's pod. `exit_code` is the workload container's, once it ended."""

    name: str
    namespace: str
    node: str
    phase: str
    exit_code: int | None = None
    reason: str = ""
    lease_id: str = ""
    resource_version: str = ""


@dataclass(frozen=True)
class TenancyStatus:
    """A tenancy as the cluster sees it: ready once its namespace and network policy exist."""

    name: str
    namespace: str
    phase: str
    ready: bool
    conditions: tuple[tuple[str, str, str], ...] = ()  # (type, status, reason)


@dataclass(frozen=True)
class GpuLeaseStatus:
    """The GpuLease custom resource: which GPUs of which node a lease holds, and its phase."""

    lease_id: str
    node: str
    tenant: str
    pod: str
    gpu_module_ids: tuple[int, ...]
    pci_addresses: tuple[str, ...]
    phase: str
    finalized: bool  # our finalizer is gone
    deleting: bool = False


@dataclass(frozen=True)
class EvictionRefusal:
    """A pod the drain could not evict, and why (a PodDisruptionBudget said no, ...)."""

    pod: str
    namespace: str
    reason: str


@dataclass(frozen=True)
class DrainReport:
    """What `drain` did: the node is cordoned; `evicted` pods are going, `refused` ones stay."""

    node: str
    evicted: tuple[str, ...] = ()
    refused: tuple[EvictionRefusal, ...] = field(default=())

    @property
    def complete(self) -> bool:
        return not self.refused


@runtime_checkable
class Cluster(Protocol):
    """Everything the console does to a cluster. Errors are `hardware.exceptions.Cluster*`."""

    def ensure_tenancy(self, name: str) -> TenancyStatus:
        """Namespace `tenant-<name>`, its network policy and the Tenancy resource; idempotent."""

    def get_tenancy(self, name: str) -> TenancyStatus | None:
        """The tenancy, or None if it does not exist."""

    def tenancy_drift(self, name: str) -> tuple[str, ...]:
        """What of a provisioned tenancy is missing now ("tenancy", "namespace", "network policy");
        empty when all is there. Read-only: `ensure_tenancy` repairs it."""

    def create_lease_pod(self, *, lease_id: str, tenant: str, image: str, node: str,
                         gpu_indexes: Sequence[int], command: Sequence[str] = (),
                         startup_timeout_s: int | None = None, predicted_boot_s: float | None = None,
                         env: Mapping[str, str] | None = None) -> PodStatus:
        """Start a lease's container in a Kata VM on `node` with exactly these GPUs (`command`: its
        argv; `env`: its environment variables); the runtime gives up on a VM not up after
        `startup_timeout_s` (None: the runtime's default)."""

    def get_lease_pod(self, *, lease_id: str, tenant: str) -> PodStatus | None:
        """The lease's pod, or None."""

    def delete_lease_pod(self, *, lease_id: str, tenant: str) -> None:
        """Delete the lease's pod; no error if it is already gone."""

    def watch_lease_pods(self, resource_version: str | None = None,
                         timeout: float = 60.0) -> Iterator[PodStatus]:
        """Yield lease pods' statuses as they change, until `timeout` seconds have passed."""

    def create_gpu_lease(self, *, lease_id: str, tenant: str, node: str, gpu_module_ids: Sequence[int],
                         pci_addresses: Sequence[str], pod: str) -> GpuLeaseStatus:
        """Record a lease's GPUs as a GpuLease carrying our finalizer; idempotent."""

    def get_gpu_lease(self, lease_id: str) -> GpuLeaseStatus | None:
        """The GpuLease, or None."""

    def set_gpu_lease_phase(self, lease_id: str, phase: str) -> GpuLeaseStatus:
        """Update `status.phase`."""

    def delete_gpu_lease(self, lease_id: str) -> None:
        """Ask for deletion; the object stays until `finalize_gpu_lease` removes our finalizer."""

    def finalize_gpu_lease(self, lease_id: str, *, levelled: bool) -> GpuLeaseStatus | None:
        """Remove our finalizer; refused (FailedPrecondition) unless the GPUs were levelled."""

    def cordon(self, node: str) -> None:
        """Mark the node unschedulable."""

    def uncordon(self, node: str) -> None:
        """Mark the node schedulable again."""

    def drain(self, node: str) -> DrainReport:
        """Cordon, then evict every pod on the node through the eviction API."""


def validate_tenant(name: str) -> str:
    """A tenant name must be a DNS-1123 label and `tenant-<name>` must fit in 63 characters."""
    if not isinstance(name, str) or not DNS1123_LABEL.match(name):
        raise InvalidArgument(f"tenant name {name!r} is not a DNS-1123 label")
    if len(kc.tenant_namespace(name)) > DNS1123_LABEL_MAX:
        raise InvalidArgument(f"tenant name {name!r} is too long for namespace {kc.tenant_namespace(name)!r}")
    return name


def validate_lease_id(lease_id: str) -> str:
    """Lease ids become object names (`lease-<id>`), so they must be DNS-1123 labels too."""
    lease_id = str(lease_id)
    if not DNS1123_LABEL.match(lease_id) or len(kc.lease_pod_name(lease_id)) > DNS1123_LABEL_MAX:
        raise InvalidArgument(f"lease id {lease_id!r} cannot name a Kubernetes object")
    return lease_id


def validate_node(node: str) -> str:
    """Node names are DNS-1123 subdomains."""
    if not isinstance(node, str) or not node or len(node) > 253 or not all(
        DNS1123_LABEL.match(part) for part in node.split(".")
    ):
        raise InvalidArgument(f"node name {node!r} is not a DNS-1123 subdomain")
    return node


def validate_gpu_indexes(gpu_indexes: Sequence[int]) -> tuple[int, ...]:
    """One or more distinct non-negative GPU indexes."""
    indexes = tuple(gpu_indexes)
    if not indexes or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in indexes):
        raise InvalidArgument(f"GPU indexes must be non-negative integers: {indexes!r}")
    if len(set(indexes)) != len(indexes):
        raise InvalidArgument(f"GPU indexes repeat: {indexes!r}")
    return indexes


def validate_pod_request(*, lease_id: str, tenant: str, image: str, node: str,
                         gpu_indexes: Sequence[int]) -> tuple[str, tuple[int, ...]]:
    """Check everything `create_lease_pod` is given; returns the normalised (lease_id, indexes)."""
    validate_tenant(tenant)
    validate_node(node)
    parse_image_reference(image)
    return validate_lease_id(lease_id), validate_gpu_indexes(gpu_indexes)
