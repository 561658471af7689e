"""Write what a node agent reports (GetInventory) into Server, Gpu and NvSwitch rows.

The agent is the source of truth for hardware identity: BDFs, IOMMU groups, UUIDs, serials,
firmware, host features (those that decide how fast a VM boots: `fleet.boot`), and whether
each GPU is isolated (`Gpu.isolated`, `isolation_reason`: alone in its IOMMU group and on
vfio-pci); placement never chooses a GPU that is not.
Idempotent: a second sync of the same inventory changes nothing and writes no audit event. GPUs
the agent no longer reports (e.g. fell off the bus, Xid 79) keep their rows — leases and history
point at them — and are returned as `missing_modules` for the caller to act on through the GPU
state machine; states are never touched here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from console.audit import Actor, audit_record
from fleet.constants import GuestFirmware, InitSystem
from fleet.models import Gpu, NvSwitch, Server
from fleet.placement_live import fleet_changed
from fleet.registration import partitions_ensure
from hardware.boot_model import kernel_generation
from hardware.types import Inventory

log = logging.getLogger(__name__)

_SERVER_FIELDS = (
    "host_kernel",
    "host_kernel_version",
    "iommu_backend",
    "plug_mode",
    "hugepages",
    "qemu_version",
    "guest_kernel_version",
    "guest_firmware",
    "init_system",
    "fabric_manager_version",
    "agent_endpoint",
)
_GPU_FIELDS = (
    "pci_address", "iommu_group", "numa_node", "uuid", "serial", "vram_mib", "firmware_version", "isolated",
    "isolation_reason",
)
_SWITCH_FIELDS = ("pci_address", "iommu_group", "device_id")


@dataclass(frozen=True)
class InventorySync:
    """What one sync did."""

    server: Server
    created: bool = False
    changes: dict[str, dict] = field(default_factory=dict)  # "server" / "gpu<m>" / "nvswitch<i>" → field → (old, new)
    missing_modules: tuple[int, ...] = ()

    @property
    def changed(self) -> bool:
        return self.created or bool(self.changes)


def _server_values(inventory: Inventory, agent_endpoint: str | None, server: Server) -> dict:
    values = {
        "host_kernel": kernel_generation(inventory.host_kernel) if inventory.host_kernel else server.host_kernel,
        "host_kernel_version": inventory.host_kernel,
        "iommu_backend": inventory.iommu_backend or server.iommu_backend,
        "plug_mode": inventory.plug_mode or server.plug_mode,
        "hugepages": inventory.hugepages,
        "qemu_version": inventory.qemu_version,
        "guest_kernel_version": inventory.guest_kernel,
        # A value the fleet does not know is recorded as unknown ("") rather than refusing the sync.
        "guest_firmware": inventory.guest_firmware if inventory.guest_firmware in GuestFirmware.values else "",
        "init_system": inventory.init_system if inventory.init_system in InitSystem.values else "",
        "fabric_manager_version": inventory.fabric_manager_version,
        "agent_endpoint": server.agent_endpoint if agent_endpoint is None else agent_endpoint,
    }
    return {k: values[k] for k in _SERVER_FIELDS}


def _apply(obj, values: dict) -> dict:
    """Set changed attributes; return {field: [old, new]} for the audit trail."""
    diff = {}
    for name, new in values.items():
        old = getattr(obj, name)
        if old != new:
            diff[name] = [old, new]
            setattr(obj, name, new)
    return diff


def _check_identity(server: Server, inventory: Inventory) -> None:
    if (server.platform, server.variant) != (inventory.platform, inventory.variant):
        raise ValidationError(
            f"{server.hostname}: agent reports {inventory.platform}/{inventory.variant}, "
            f"the fleet has {server.platform}/{server.variant}; re-register the server deliberately"
        )
    if inventory.hostname != server.hostname:
        raise ValidationError(f"agent for {server.hostname} reports host name {inventory.hostname}")


@transaction.atomic
def server_sync_inventory(
    *,
    server: Server,
    inventory: Inventory,
    actor: Actor,
    source: str = "agent",
    agent_endpoint: str | None = None,
) -> InventorySync:
    """Upsert the server's host features, GPUs and NVSwitches from `inventory` (idempotent).

    `source` says where the inventory came from ("agent", "simulator", ...) and goes into the audit
    event. Raises ValidationError when the agent reports another platform/variant or host name.
    """
    server = Server.objects.select_for_update().get(pk=server.pk)
    _check_identity(server, inventory)
    changes: dict[str, dict] = {}
    diff = _apply(server, _server_values(inventory, agent_endpoint, server))
    server.last_seen_at = timezone.now()
    server.full_clean()
    server.save()
    if diff:
        changes["server"] = diff

    existing = {g.module_id: g for g in server.gpus.all()}
    reported = set()
    for info in inventory.gpus:
        if info.module_id is None:
            log.warning(
                "%s: GPU %s has no module id (not in the board map); skipped", server.hostname, info.pci.address
            )
            continue
        reported.add(info.module_id)
        values = {
            "pci_address": info.pci.address,
            "iommu_group": info.pci.iommu_group if info.pci.iommu_group is not None else 0,
            "numa_node": info.pci.numa_node,
            "uuid": info.uuid,
            "serial": info.serial,
            "vram_mib": info.vram_mib,
            "firmware_version": info.firmware_version,
            "isolated": info.isolated,
            "isolation_reason": info.isolation_reason,
        }
        gpu = existing.get(info.module_id) or Gpu(server=server, module_id=info.module_id)
        diff = _apply(gpu, values)
        if diff or gpu.pk is None:
            gpu.full_clean()
            gpu.save()
            changes[f"gpu{info.module_id}"] = diff

    switches = {s.index: s for s in server.nvswitches.all()}
    for index, dev in enumerate(sorted(inventory.nvswitches, key=lambda d: d.address)):
        values = {
            "pci_address": dev.address,
            "iommu_group": dev.iommu_group if dev.iommu_group is not None else 0,
            "device_id": f"0x{dev.device_id:04x}",
        }
        switch = switches.get(index) or NvSwitch(server=server, index=index)
        diff = _apply(switch, values)
        if diff or switch.pk is None:
            switch.full_clean()
            switch.save()
            changes[f"nvswitch{index}"] = diff

    partitions_ensure(server)
    missing = tuple(sorted(set(existing) - reported))
    if changes:
        fleet_changed()  # GPU rows (their ids, firmware) the placement index reads
        audit_record(
            actor=actor,
            verb="fleet.server.inventory_synced",
            target=server,
            after={"source": source, "changes": changes, "missing_modules": list(missing)},
            message=f"inventory from {source}: {len(changes)} row(s) changed",
        )
    return InventorySync(server=server, changes=changes, missing_modules=missing)


@transaction.atomic
def server_register_from_inventory(
    *, inventory: Inventory, rack: str, slot: int, agent_endpoint: str, actor: Actor, source: str = "agent"
) -> InventorySync:
    """Create the server (if new) from what its agent reports, then sync its rows. Idempotent."""
    server = Server.objects.filter(hostname=inventory.hostname).first()
    created = server is None
    if created:
        server = Server(
            hostname=inventory.hostname,
            platform=inventory.platform,
            variant=inventory.variant,
            rack=rack,
            slot=slot,
            agent_endpoint=agent_endpoint,
        )
        server.full_clean()
        server.save()
        audit_record(
            actor=actor,
            verb="fleet.server.registered",
            target=server,
            after={"platform": inventory.platform, "variant": inventory.variant, "source": source},
            message=f"registered from the inventory its agent reported ({source})",
        )
    result = server_sync_inventory(
        server=server, inventory=inventory, actor=actor, source=source, agent_endpoint=agent_endpoint
    )
    return InventorySync(
        server=result.server, created=created, changes=result.changes, missing_modules=result.missing_modules
    )
