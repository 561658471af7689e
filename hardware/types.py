"""Frozen dataclasses that cross the hardware boundary.

The agent client returns these, never protobuf objects; host backends (LinuxHost, SimHost) return
them too, so the agent's servicer only converts between these and the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class DeviceKind(StrEnum):
    GPU = "gpu"
    NVSWITCH = "nvswitch"
    SWITCH_MGMT = "switch_mgmt"  # the board's Switchtec management endpoint


@dataclass(frozen=True)
class PciDevice:
    """One PCI function as the host sees it. `module_id` is known only from the board map."""

    address: str  # full BDF with domain, e.g. "0000:18:00.0"
    kind: DeviceKind
    vendor_id: int
    device_id: int
    class_code: int
    iommu_group: int | None
    driver: str | None  # bound kernel driver, e.g. "vfio-pci", "nvidia", None
    numa_node: int
    module_id: int | None = None
    subsystem_vendor_id: int | None = None
    subsystem_device_id: int | None = None


@dataclass(frozen=True)
class GpuInfo:
    """A GPU on the host: its PCI function plus what the host knows of it.

    `isolation_reason` says why VFIO cannot hand this GPU, and only it, to a VM ("" when it can):
    it shares its IOMMU group with another endpoint, has no IOMMU group, or is bound to a host
    driver instead of vfio-pci (hardware/isolation.py). A GPU that is not `isolated` is never
    offered: the device plugin leaves it out and placement never chooses it.
    """

    pci: PciDevice
    module_id: int | None
    uuid: str
    serial: str
    vram_mib: int
    firmware_version: str
    alone_in_iommu_group: bool = True
    isolation_reason: str = ""

    @property
    def isolated(self) -> bool:
        return not self.isolation_reason


@dataclass(frozen=True)
class Inventory:
    """What GetInventory answers: the server's GPUs, NVSwitches and switch management endpoint."""

    hostname: str
    platform: str  # hardware.platforms key, e.g. "hgx-h100-8"
    variant: str  # board variant key, e.g. "supermicro"
    gpus: tuple[GpuInfo, ...]
    nvswitches: tuple[PciDevice, ...]
    switch_mgmt: PciDevice | None
    agent_version: str = ""
    fabric_manager_version: str = ""
    host_kernel: str = ""
    iommu_backend: str = ""  # "vfio-type1" or "iommufd"
    plug_mode: str = ""  # "hot" or "cold"
    hugepages: bool = False
    qemu_version: str = ""  # "" when unknown
    guest_kernel: str = ""  # the Kata guest kernel's release
    guest_firmware: str = ""  # "ovmf" or "seabios"
    init_system: str = ""  # the guest's init: "systemd" or "nvrc"


@dataclass(frozen=True)
class GpuHolder:
    """A process holding a GPU's VFIO device open (`/dev/vfio/<group>` or its iommufd cdev).

    `vm_id` is the guest name a QEMU (or Kata's QEMU) process was started with (`-name`), ""
    when the process is not a VM or names no guest. A GPU with a holder is not safe to scrub or
    to take out of its partition: the VM that holds it is still alive.
    """

    pid: int
    name: str  # the process's `comm`, e.g. "qemu-system-x86"
    vm_id: str = ""


@dataclass(frozen=True)
class PartitionInfo:
    """One row of the fabric manager's partition list, as it reports it (physical ids, no BDFs)."""

    partition_id: int
    active: bool
    gpu_module_ids: tuple[int, ...]
    nvlinks: int


@dataclass(frozen=True)
class ScrubProgress:
    module_id: int
    phase: str  # "boot-vm", "reset", "clear", "verify", "done"
    percent: float
    detail: str = ""
    done: bool = False
    ok: bool = True


@dataclass(frozen=True)
class FirmwareStatus:
    module_id: int
    version: str
    pinned: str
    matches: bool


class HealthKind(StrEnum):
    XID = "xid"
    ECC = "ecc"
    ROW_REMAP = "row_remap"
    TEMPERATURE = "temperature"
    NVLINK = "nvlink"
    GPU_LOST = "gpu_lost"
    # Not about one GPU (module_id 0): the fabric manager restarted and waits for the list of
    # partitions still active (SetActivatedPartitions, 60 s); the console replays it at once.
    FABRIC_MANAGER_RESTARTED = "fabric_manager_restarted"


@dataclass(frozen=True)
class HealthEvent:
    """One health observation for a GPU (or, module_id 0, for the host's fabric manager);
    `action` is the Xid catalog's operator action."""

    hostname: str
    module_id: int
    kind: HealthKind
    at: datetime
    xid: int | None = None
    action: str = ""
    message: str = ""
    temperature_c: float | None = None
    ecc_corrected: int | None = None
    ecc_uncorrected: int | None = None
    row_remaps: int | None = None
    nvlink_errors: int | None = None


@dataclass(frozen=True)
class BootPhaseEvent:
    """One phase of a VM's boot, with real-scale times (the simulator's clock may be accelerated)."""

    vm_id: str
    phase: str
    started_at: datetime
    ended_at: datetime | None
    detail: str = ""
    final: bool = False  # the last event of the stream: the VM is up (or failed)
    ok: bool = True


@dataclass(frozen=True)
class BootEstimate:
    """The boot-time model's prediction for a VM: phase name → seconds, in order."""

    phases: tuple[tuple[str, float], ...] = field(default=())

    @property
    def total_seconds(self) -> float:
        return sum(seconds for _, seconds in self.phases)


class VmState(StrEnum):
    """A simulated VM's life (SimAdmin): booting → running → succeeded, or failed / stopped."""

    BOOTING = "booting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class VmInfo:
    """A VM as the simulator's kubelet + Kata stand-in reports it (SimAdmin.GetVm)."""

    vm_id: str
    pod_name: str
    gpu_module_ids: tuple[int, ...]
    state: VmState
    phases: tuple[BootPhaseEvent, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class ClockInfo:
    """The simulator's clock: simulated now and how many simulated seconds pass per real second."""

    now: datetime
    acceleration: float


@dataclass(frozen=True)
class GpuLeaseBinding:
    """One GPU lease on a node as the console tells the agent (`SetGpuLeases`, level-based).

    `module_ids` are the lease's GPUs on this node, which are also their device plugin ids and CDI
    indexes (`nvidia.com/gpu=<module id>`); `phase` is the lease's phase (`GpuLease.status.phase`
    or the console's lease state): the device plugin allocates its GPUs only in an allocatable
    phase (`hardware.deviceplugin.leases.ALLOCATABLE_PHASES`, e.g. "Ready").
    """

    lease_id: str
    pod_namespace: str
    pod_name: str
    module_ids: tuple[int, ...]
    phase: str
