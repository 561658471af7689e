"""Register servers and their hardware rows from platform data (seeding) — the inventory-driven
path (`fleet.inventory`) reuses `partitions_ensure`."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from django.db import transaction

from console.audit import Actor, audit_record
from fleet.models import Gpu, NvSwitch, Partition, Server
from fleet.placement_live import fleet_changed
from fleet.states import PartitionState
from hardware.platforms import get_platform

_UUID_NAMESPACE = uuid.UUID("6f1d3c2e-9a47-4d0b-8f54-2b7c1e9d0a11")


@dataclass(frozen=True)
class ServerSpec:
    hostname: str
    platform: str
    variant: str
    rack: str
    slot: int
    agent_endpoint: str = ""
    host_kernel: str = "old"
    host_kernel_version: str = ""  # "" unknown: the boot prediction takes the oldest kernel
    plug_mode: str = "hot"
    iommu_backend: str = "vfio-type1"
    hugepages: bool = False


def gpu_identity(hostname: str, module_id: int) -> tuple[str, str]:
    """A stable UUID and 13-digit serial for a seeded GPU (real ones come from the agent)."""
    gpu_uuid = f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{hostname}/{module_id}')}"
    digest = int(hashlib.sha256(f"{hostname}/{module_id}".encode()).hexdigest(), 16)
    serial = f"165{digest % 10**10:010d}"
    return gpu_uuid, serial


def free_slot(rack: str, wanted: int, hostname: str) -> int:
    """The wanted slot in `rack`, or the next free one when another host already holds it (an earlier
    seeding or registration with other arguments); a slot `hostname` itself holds counts as free."""
    taken = dict(Server.objects.filter(rack=rack).values_list("slot", "hostname"))
    while taken.get(wanted, hostname) != hostname:
        wanted += 1
    return wanted


def partitions_ensure(server: Server) -> int:
    """Create the server's partition rows from its platform table; 1-GPU partitions start active
    (every GPU isolated, as in seed 001). Returns how many rows were created."""
    spec = server.platform_spec
    existing = set(server.partitions.values_list("partition_id", flat=True))
    rows = [
        Partition(
            server=server,
            partition_id=p.id,
            module_ids=list(p.gpus),
            size=p.size,
            nvlinks=p.nvlinks,
            state=PartitionState.ACTIVE if p.size == 1 else PartitionState.INACTIVE,
        )
        for p in spec.partitions
        if p.id not in existing
    ]
    for row in rows:
        row.full_clean()
    Partition.objects.bulk_create(rows)
    return len(rows)


@transaction.atomic
def server_register_from_platform(*, spec: ServerSpec, actor: Actor) -> tuple[Server, bool]:
    """Create a server with GPUs, NVSwitches and partitions from its platform's board data.

    Idempotent: an existing hostname is returned unchanged with created=False.
    """
    existing = Server.objects.filter(hostname=spec.hostname).first()
    if existing is not None:
        return existing, False
    platform = get_platform(spec.platform)
    server = Server(
        hostname=spec.hostname,
        platform=spec.platform,
        variant=spec.variant,
        rack=spec.rack,
        slot=spec.slot,
        agent_endpoint=spec.agent_endpoint,
        host_kernel=spec.host_kernel,
        host_kernel_version=spec.host_kernel_version,
        plug_mode=spec.plug_mode,
        iommu_backend=spec.iommu_backend,
        hugepages=spec.hugepages,
    )
    server.full_clean()
    server.save()
    variant = platform.variant(spec.variant)
    gpus = []
    for bdf, module_id, group, numa in zip(
        variant.gpu_bdfs, variant.module_ids, variant.gpu_iommu_groups, variant.gpu_numa, strict=True
    ):
        gpu_uuid, serial = gpu_identity(spec.hostname, module_id)
        gpu = Gpu(
            server=server,
            module_id=module_id,
            pci_address=f"0000:{bdf}",
            iommu_group=group,
            numa_node=numa,
            uuid=gpu_uuid,
            serial=serial,
            vram_mib=platform.vram_mib,
            firmware_version=platform.pinned_firmware,
        )
        gpu.full_clean(validate_unique=False)
        gpus.append(gpu)
    Gpu.objects.bulk_create(gpus)
    groups = variant.switch_iommu_groups
    switches = [
        NvSwitch(
            server=server,
            index=i,
            pci_address=f"0000:{bdf}",
            iommu_group=groups[0] if len(groups) == 1 else groups[i],
            device_id=f"0x{platform.nvswitch_device_id:04x}",
        )
        for i, bdf in enumerate(variant.switch_bdfs)
    ]
    NvSwitch.objects.bulk_create(switches)
    partitions_ensure(server)
    audit_record(
        actor=actor,
        verb="fleet.server.registered",
        target=server,
        after={"platform": spec.platform, "variant": spec.variant, "gpus": len(gpus)},
        message=f"registered {platform.name} ({variant.vendor}) from platform data",
    )
    fleet_changed()
    return server, True
