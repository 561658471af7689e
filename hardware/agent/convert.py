"""The one place that converts between protobuf messages and hardware/types.py dataclasses.

The servicer converts dataclasses to messages, the client messages back to dataclasses, so a
round trip is the identity (tested). Optional fields use proto3 `optional` presence.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from hardware.isolation import NOT_ALONE_REASON
from hardware.proto.gen.gpuconsole.agent.v1 import agent_pb2 as pb
from hardware.proto.gen.gpuconsole.simulator.v1 import simadmin_pb2 as simpb
from hardware.types import (
    BootPhaseEvent,
    ClockInfo,
    DeviceKind,
    FirmwareStatus,
    GpuHolder,
    GpuInfo,
    GpuLeaseBinding,
    HealthEvent,
    HealthKind,
    Inventory,
    PartitionInfo,
    PciDevice,
    ScrubProgress,
    VmInfo,
    VmState,
)

_KIND_TO_PB = {
    DeviceKind.GPU: pb.DEVICE_KIND_GPU,
    DeviceKind.NVSWITCH: pb.DEVICE_KIND_NVSWITCH,
    DeviceKind.SWITCH_MGMT: pb.DEVICE_KIND_SWITCH_MGMT,
}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}
_HEALTH_TO_PB = {kind: pb.HealthKind.Value(f"HEALTH_KIND_{kind.name}") for kind in HealthKind}
_HEALTH_FROM_PB = {v: k for k, v in _HEALTH_TO_PB.items()}
_VM_TO_PB = {state: simpb.VmState.Value(f"VM_STATE_{state.name}") for state in VmState}
_VM_FROM_PB = {v: k for k, v in _VM_TO_PB.items()}


def _opt(msg, field: str):
    return getattr(msg, field) if msg.HasField(field) else None


def ts_to_pb(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def ts_from_pb(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


# -- inventory --------------------------------------------------------------------------
def pci_to_pb(d: PciDevice) -> pb.PciDevice:
    return pb.PciDevice(
        address=d.address,
        kind=_KIND_TO_PB[d.kind],
        vendor_id=d.vendor_id,
        device_id=d.device_id,
        class_code=d.class_code,
        iommu_group=d.iommu_group,
        driver=d.driver or "",
        numa_node=d.numa_node,
        module_id=d.module_id,
        subsystem_vendor_id=d.subsystem_vendor_id,
        subsystem_device_id=d.subsystem_device_id,
    )


def pci_from_pb(m: pb.PciDevice) -> PciDevice:
    return PciDevice(
        address=m.address,
        kind=_KIND_FROM_PB[m.kind],
        vendor_id=m.vendor_id,
        device_id=m.device_id,
        class_code=m.class_code,
        iommu_group=_opt(m, "iommu_group"),
        driver=m.driver or None,
        numa_node=m.numa_node,
        module_id=_opt(m, "module_id"),
        subsystem_vendor_id=_opt(m, "subsystem_vendor_id"),
        subsystem_device_id=_opt(m, "subsystem_device_id"),
    )


def inventory_to_pb(inv: Inventory) -> pb.Inventory:
    return pb.Inventory(
        hostname=inv.hostname,
        platform=inv.platform,
        variant=inv.variant,
        gpus=[
            pb.Gpu(
                pci=pci_to_pb(g.pci),
                module_id=g.module_id,
                uuid=g.uuid,
                serial=g.serial,
                vram_mib=g.vram_mib,
                firmware_version=g.firmware_version,
                alone_in_iommu_group=g.alone_in_iommu_group,
                isolation_reason=g.isolation_reason,
            )
            for g in inv.gpus
        ],
        nvswitches=[pci_to_pb(s) for s in inv.nvswitches],
        switch_mgmt=pci_to_pb(inv.switch_mgmt) if inv.switch_mgmt else None,
        features=pb.HostFeatures(
            kernel=inv.host_kernel,
            iommu_backend=inv.iommu_backend,
            plug_mode=inv.plug_mode,
            hugepages=inv.hugepages,
            fabric_manager_version=inv.fabric_manager_version,
            agent_version=inv.agent_version,
            qemu_version=inv.qemu_version,
            guest_kernel=inv.guest_kernel,
            guest_firmware=inv.guest_firmware,
            init_system=inv.init_system,
        ),
    )


def _isolation_reason(g: pb.Gpu) -> str:
    # An agent older than the field sends only `alone_in_iommu_group`: never read that as isolated.
    if g.isolation_reason or g.alone_in_iommu_group:
        return g.isolation_reason
    return NOT_ALONE_REASON


def inventory_from_pb(m: pb.Inventory) -> Inventory:
    f = m.features
    return Inventory(
        hostname=m.hostname,
        platform=m.platform,
        variant=m.variant,
        gpus=tuple(
            GpuInfo(
                pci=pci_from_pb(g.pci),
                module_id=_opt(g, "module_id"),
                uuid=g.uuid,
                serial=g.serial,
                vram_mib=g.vram_mib,
                firmware_version=g.firmware_version,
                alone_in_iommu_group=g.alone_in_iommu_group,
                isolation_reason=_isolation_reason(g),
            )
            for g in m.gpus
        ),
        nvswitches=tuple(pci_from_pb(s) for s in m.nvswitches),
        switch_mgmt=pci_from_pb(m.switch_mgmt) if m.HasField("switch_mgmt") else None,
        agent_version=f.agent_version,
        fabric_manager_version=f.fabric_manager_version,
        host_kernel=f.kernel,
        iommu_backend=f.iommu_backend,
        plug_mode=f.plug_mode,
        hugepages=f.hugepages,
        qemu_version=f.qemu_version,
        guest_kernel=f.guest_kernel,
        guest_firmware=f.guest_firmware,
        init_system=f.init_system,
    )


# -- partitions, scrub, firmware ----------------------------------------------------------
def partition_to_pb(p: PartitionInfo) -> pb.Partition:
    return pb.Partition(
        partition_id=p.partition_id, active=p.active, gpu_module_ids=p.gpu_module_ids, nvlinks=p.nvlinks
    )


def partition_from_pb(m: pb.Partition) -> PartitionInfo:
    return PartitionInfo(m.partition_id, m.active, tuple(m.gpu_module_ids), m.nvlinks)


def scrub_to_pb(s: ScrubProgress) -> pb.ScrubProgress:
    return pb.ScrubProgress(
        module_id=s.module_id, phase=s.phase, percent=s.percent, detail=s.detail, done=s.done, ok=s.ok
    )


def scrub_from_pb(m: pb.ScrubProgress) -> ScrubProgress:
    return ScrubProgress(m.module_id, m.phase, m.percent, m.detail, m.done, m.ok)


def firmware_to_pb(f: FirmwareStatus) -> pb.FirmwareStatus:
    return pb.FirmwareStatus(module_id=f.module_id, version=f.version, pinned=f.pinned, matches=f.matches)


def firmware_from_pb(m: pb.FirmwareStatus) -> FirmwareStatus:
    return FirmwareStatus(m.module_id, m.version, m.pinned, m.matches)


# -- GPU holders ---------------------------------------------------------------------------
def gpu_holders_to_pb(holders: Iterable[GpuHolder]) -> pb.GpuHolders:
    return pb.GpuHolders(holders=[pb.GpuHolder(pid=h.pid, name=h.name, vm_id=h.vm_id) for h in holders])


def gpu_holders_from_pb(m: pb.GpuHolders) -> tuple[GpuHolder, ...]:
    return tuple(GpuHolder(pid=h.pid, name=h.name, vm_id=h.vm_id) for h in m.holders)


# -- GPU leases (the device plugin's view) ------------------------------------------------
def gpu_lease_to_pb(b: GpuLeaseBinding) -> pb.GpuLease:
    return pb.GpuLease(
        lease_id=b.lease_id,
        pod_namespace=b.pod_namespace,
        pod_name=b.pod_name,
        module_ids=b.module_ids,
        phase=b.phase,
    )


def gpu_lease_from_pb(m: pb.GpuLease) -> GpuLeaseBinding:
    return GpuLeaseBinding(m.lease_id, m.pod_namespace, m.pod_name, tuple(m.module_ids), m.phase)


# -- streams ------------------------------------------------------------------------------
def health_to_pb(e: HealthEvent) -> pb.HealthEvent:
    return pb.HealthEvent(
        hostname=e.hostname,
        module_id=e.module_id,
        kind=_HEALTH_TO_PB[e.kind],
        at=ts_to_pb(e.at),
        xid=e.xid,
        action=e.action,
        message=e.message,
        temperature_c=e.temperature_c,
        ecc_corrected=e.ecc_corrected,
        ecc_uncorrected=e.ecc_uncorrected,
        row_remaps=e.row_remaps,
        nvlink_errors=e.nvlink_errors,
    )


def health_from_pb(m: pb.HealthEvent) -> HealthEvent:
    return HealthEvent(
        hostname=m.hostname,
        module_id=m.module_id,
        kind=_HEALTH_FROM_PB[m.kind],
        at=ts_from_pb(m.at),
        xid=_opt(m, "xid"),
        action=m.action,
        message=m.message,
        temperature_c=_opt(m, "temperature_c"),
        ecc_corrected=_opt(m, "ecc_corrected"),
        ecc_uncorrected=_opt(m, "ecc_uncorrected"),
        row_remaps=_opt(m, "row_remaps"),
        nvlink_errors=_opt(m, "nvlink_errors"),
    )


def boot_to_pb(e: BootPhaseEvent) -> pb.BootPhase:
    return pb.BootPhase(
        vm_id=e.vm_id,
        phase=e.phase,
        started_at=ts_to_pb(e.started_at),
        ended_at=ts_to_pb(e.ended_at) if e.ended_at else None,
        detail=e.detail,
        final=e.final,
        ok=e.ok,
    )


def boot_from_pb(m: pb.BootPhase) -> BootPhaseEvent:
    return BootPhaseEvent(
        vm_id=m.vm_id,
        phase=m.phase,
        started_at=ts_from_pb(m.started_at),
        ended_at=ts_from_pb(m.ended_at) if m.HasField("ended_at") else None,
        detail=m.detail,
        final=m.final,
        ok=m.ok,
    )


# -- simulator administration ------------------------------------------------------------
def vm_to_pb(v: VmInfo) -> simpb.Vm:
    return simpb.Vm(
        vm_id=v.vm_id,
        pod_name=v.pod_name,
        gpu_module_ids=v.gpu_module_ids,
        state=_VM_TO_PB[v.state],
        phases=[boot_to_pb(p) for p in v.phases],
        detail=v.detail,
    )


def vm_from_pb(m: simpb.Vm) -> VmInfo:
    return VmInfo(
        m.vm_id,
        m.pod_name,
        tuple(m.gpu_module_ids),
        _VM_FROM_PB[m.state],
        tuple(boot_from_pb(p) for p in m.phases),
        m.detail,
    )


def clock_to_pb(c: ClockInfo) -> simpb.Clock:
    return simpb.Clock(now=ts_to_pb(c.now), acceleration=c.acceleration)


def clock_from_pb(m: simpb.Clock) -> ClockInfo:
    return ClockInfo(ts_from_pb(m.now), m.acceleration)
