"""Plain-data snapshot of the fleet that placement decides on.

No Django here: the services layer reads servers and GPUs from the database, turns them into these
frozen dataclasses and hands them to `fleet.placement`. Keeping the decision pure means it can be
property-tested against a brute-force reference and benchmarked at fleet scale without a database.

State names are plain strings, so the ORM's choices and these constants compare directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# The few state names placement compares with (ARCHITECTURE.md "States"; fleet/states.py defines them
# all, with Django; tests/fleet/test_placement.py checks these equal them). Only FREE GPUs can be
# given to a tenant (invariant 2); only ACTIVE servers receive new leases (invariant 6).
GPU_FREE = "free"
GPU_RESERVED = "reserved"
SCHEDULABLE_SERVER_STATES = frozenset({"active"})


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU module as placement sees it.

    `healthy` is False when the GPU is excluded by health checks (Xid, ECC, fabric manager
    degraded) even if its state still says free. `tenant` is whoever holds it now (None when free);
    placement only uses it to spread one tenant's leases over racks.
    """

    module_id: int
    state: str
    healthy: bool = True
    firmware_version: str = ""
    temperature_c: float | None = None
    tenant: str | None = None

    @property
    def available(self) -> bool:
        return self.state == GPU_FREE and self.healthy


@dataclass(frozen=True)
class ServerSnapshot:
    """One server: its platform (key into hardware.platforms), GPUs by module id, active partitions."""

    server_id: int
    hostname: str
    platform_key: str
    rack: str
    state: str
    gpus: Mapping[int, GpuSnapshot]
    active_partition_ids: frozenset[int] = frozenset()

    @property
    def schedulable(self) -> bool:
        return self.state in SCHEDULABLE_SERVER_STATES


@dataclass(frozen=True)
class Request:
    """What a tenant asks for: a GPU count (must be a partition size), optionally servers to avoid."""

    gpu_count: int
    tenant: str | None = None
    exclude_servers: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Placement:
    """The decision: activate `partition_id` on `server_id`, after deactivating `deactivate_first`
    (idle 1-GPU partitions inside it that the fabric manager would otherwise answer "in use" to)."""

    server_id: int
    partition_id: int
    gpu_module_ids: tuple[int, ...]
    deactivate_first: tuple[int, ...] = ()


@dataclass(frozen=True)
class NoFit:
    """No server can take the request now; `reason` is meant for the tenant and the operator."""

    reason: str


def with_placement(
    server: ServerSnapshot, placement: Placement, tenant: str | None = None, state: str = GPU_RESERVED
) -> ServerSnapshot:
    """The server as it will be once `placement` is reserved: its GPUs taken, its partition active."""
    taken = set(placement.gpu_module_ids)
    gpus = {m: replace(g, state=state, tenant=tenant) if m in taken else g for m, g in server.gpus.items()}
    active = (server.active_partition_ids - set(placement.deactivate_first)) | {placement.partition_id}
    return replace(server, gpus=gpus, active_partition_ids=frozenset(active))


def with_release(server: ServerSnapshot, partition_id: int, module_ids: tuple[int, ...]) -> ServerSnapshot:
    """The server after a lease on `partition_id` ended and its GPUs came back free.

    In production GPUs return to free only after scrub and firmware levelling (invariant 2); the
    snapshot is simply rebuilt then. This shortcut serves simulations and benchmarks.
    """
    back = set(module_ids)
    gpus = {m: replace(g, state=GPU_FREE, tenant=None) if m in back else g for m, g in server.gpus.items()}
    return replace(server, gpus=gpus, active_partition_ids=server.active_partition_ids - {partition_id})
