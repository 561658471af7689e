"""`LinuxHost`: the HostBackend a node agent serves on a real GPU server.

What is real: PCI discovery from sysfs, vfio-pci binding, GPU reset through the sysfs `reset`
file, partition calls through NVIDIA's `fmpm`, and the service VMs' libvirt life cycle. What needs
a guest (scrub, VBIOS read and flash) goes through an injected GuestRunner; health and boot events
are read from a journal that other processes write (see journal.py), and a fabric-manager restart
is detected by probing it (fabric_manager.RestartDetector) while the health stream is followed.
Which processes hold a GPU's VFIO device, and their eviction, are read from a proc root
(holders.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from hardware.exceptions import FailedPrecondition, HardwareError, NotFound
from hardware.linux.boardmap import BoardMap
from hardware.linux.fabric_manager import FabricManager, RestartDetector
from hardware.linux.guest import GuestRunner
from hardware.linux.holders import (
    DEFAULT_PROC_ROOT,
    EVICT_GRACE_S,
    EVICT_WAIT_S,
    Kill,
    VfioHolders,
    vfio_device_paths,
)
from hardware.linux.journal import EventJournal
from hardware.linux.records import GpuRecordStore, GpuReport
from hardware.linux.service_vm import ServiceVms, fabric_manager_vm_spec, gpu_vm_spec
from hardware.linux.sysfs import DEFAULT_SYSFS_ROOT, DiscoveredGpu, Discovery, MalformedEntry, SysfsPci
from hardware.linux.vfio import SysfsWrite, VfioBinder, write_sysfs
from hardware.platforms import Platform
from hardware.types import (
    BootPhaseEvent,
    FirmwareStatus,
    GpuHolder,
    GpuInfo,
    HealthEvent,
    Inventory,
    PartitionInfo,
    PciDevice,
    ScrubProgress,
)

log = logging.getLogger(__name__)

HUGEPAGES_1G = Path("kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
IOMMUFD_MISC = Path("class/misc/iommu")  # the /dev/iommu character device (iommufd)
FABRIC_MANAGER_POLL_S = 5.0


# Inventory fields the node's Kata configuration decides (not readable from sysfs).
VM_FEATURES = ("qemu_version", "guest_kernel", "guest_firmware", "init_system")


class LinuxHost:
    """HostBackend over this machine's sysfs, libvirt and fabric manager."""

    def __init__(
        self,
        *,
        board_map: BoardMap,
        sysfs_root: str | os.PathLike[str] = DEFAULT_SYSFS_ROOT,
        fabric_manager: FabricManager | None = None,
        service_vms: ServiceVms | None = None,
        guest: GuestRunner | None = None,
        records: GpuRecordStore | None = None,
        journal: EventJournal | None = None,
        hostname: str | None = None,
        write: SysfsWrite = write_sysfs,
        follow_journal: bool = True,
        stop: threading.Event | None = None,
        plug_mode: str = "cold",
        vm_features: dict[str, str] | None = None,
        agent_version: str = "",
        fabric_manager_version: str = "",
        fabric_manager_poll_s: float = FABRIC_MANAGER_POLL_S,
        proc_root: str | os.PathLike[str] = DEFAULT_PROC_ROOT,
        kill: Kill = os.kill,
        evict_grace_s: float = EVICT_GRACE_S,
        evict_wait_s: float = EVICT_WAIT_S,
    ) -> None:
        """`fabric_manager_poll_s`: how often a followed health stream probes the fabric manager for
        a restart (0: never); well inside its 60 s window, so the console has most of it to replay.
        `proc_root` and `kill` are where GPU holders are found and how they are signalled;
        `evict_grace_s` is SIGTERM → SIGKILL, `evict_wait_s` the bounded wait after SIGKILL.
        `vm_features`: what the node's Kata configuration boots (`qemu_version`, `guest_kernel`,
        `guest_firmware`, `init_system`), reported for the console's boot prediction; missing ones
        are reported as "" (unknown: the console predicts conservatively)."""
        self.board_map = board_map
        self.platform: Platform = board_map.platform_data
        self.sysfs = SysfsPci(sysfs_root)
        self.write = write
        self.vfio = VfioBinder(self.sysfs, write)
        self.fabric_manager = fabric_manager or FabricManager()
        self.service_vms = service_vms or ServiceVms()
        self.guest = guest
        self.records = records
        self.journal = journal
        self.hostname = hostname or socket.gethostname()
        self.follow_journal = follow_journal
        self.stop = stop or threading.Event()
        self.plug_mode = plug_mode
        self.vm_features = {k: (vm_features or {}).get(k, "") for k in VM_FEATURES}
        self.agent_version = agent_version
        self.fabric_manager_version = fabric_manager_version
        self.fabric_manager_poll_s = fabric_manager_poll_s
        self.vfio_holders = VfioHolders(proc_root, kill=kill, grace_s=evict_grace_s, wait_s=evict_wait_s)

    # -- inventory -------------------------------------------------------------------------------

    def inventory(self) -> Inventory:
        discovery = self.sysfs.discover()
        gpus = tuple(self._gpu_info(gpu) for gpu in discovery.gpus)
        found = {gpu.pci.address for gpu in gpus}
        for module_id, address in sorted(self.board_map.modules.items()):
            if address not in found:
                log.error("GPU module %d (%s in the board map) is not on the PCI bus", module_id, address)
        return Inventory(
            hostname=self.hostname,
            platform=self.board_map.platform,
            variant=self.board_map.variant,
            gpus=gpus,
            nvswitches=tuple(fn.to_device() for fn in discovery.nvswitches),
            switch_mgmt=_switch_mgmt(discovery),
            agent_version=self.agent_version,
            fabric_manager_version=self.fabric_manager_version,
            host_kernel=os.uname().release,
            iommu_backend="iommufd" if (self.sysfs.root / IOMMUFD_MISC).exists() else "vfio-type1",
            plug_mode=self.plug_mode,
            hugepages=_positive_int(self.sysfs.root / HUGEPAGES_1G),
            **self.vm_features,
        )

    def _gpu_info(self, gpu: DiscoveredGpu) -> GpuInfo:
        fn = gpu.function
        module_id = self.board_map.module_of(fn.address)
        if module_id is None:
            log.warning("GPU %s is not in the board map: it has no module id", fn.address)
        report = self._report(fn.address) or GpuReport()
        return GpuInfo(
            pci=fn.to_device(module_id),
            module_id=module_id,
            uuid=report.uuid,
            serial=report.serial,
            # VRAM is the platform's until a service VM reported it. The VBIOS version stays ""
            # (unknown) rather than the pinned one, so nothing mistakes "never read" for "matches".
            vram_mib=report.vram_mib or self.platform.vram_mib,
            firmware_version=report.firmware_version,
            alone_in_iommu_group=gpu.alone_in_iommu_group,
            isolation_reason=gpu.isolation_reason,
        )

    def _report(self, address: str) -> GpuReport | None:
        return self.records.get(address) if self.records is not None else None

    # -- vfio ------------------------------------------------------------------------------------

    def bind_vfio(self, address: str) -> None:
        self.vfio.bind(address)

    def unbind_vfio(self, address: str) -> None:
        self.vfio.unbind(address)

    # -- fabric manager --------------------------------------------------------------------------

    def list_partitions(self) -> list[PartitionInfo]:
        # As reported, degraded GPUs included: hiding those is the controller's job (HARDWARE.md).
        return self.fabric_manager.list_partitions()

    def activate_partition(self, partition_id: int) -> None:
        self.fabric_manager.activate(partition_id)

    def deactivate_partition(self, partition_id: int) -> None:
        self.fabric_manager.deactivate(partition_id)

    def set_activated_partitions(self, partition_ids: Iterable[int]) -> None:
        self.fabric_manager.set_activated(partition_ids)

    # -- service VMs -----------------------------------------------------------------------------

    def start_fabric_manager_vm(self, *, disk_image: str | None = None) -> str:
        """Define and start the fabric-manager VM with the whole NVSwitch group(s), unless it runs.

        Not part of HostBackend: the agent calls it at start-up, before any partition call.
        libvirt's managed hostdevs move the group to vfio-pci on start and back on destroy.
        """
        spec = fabric_manager_vm_spec(self.sysfs.discover(), disk_image=disk_image)
        if not self.service_vms.is_running(spec.name):
            self.service_vms.define(spec)
            self.service_vms.start(spec.name)
        return spec.name

    def close(self) -> None:
        self.service_vms.close()

    def scrub_gpu(self, module_id: int) -> Iterator[ScrubProgress]:
        """Boot a scrub VM with the GPU; relay the guest's progress; always tear the VM down."""
        address = self._offerable_address(module_id)
        guest = self._guest()
        yield ScrubProgress(module_id=module_id, phase="boot-vm", percent=0.0, detail=address)
        with self.service_vms.running(gpu_vm_spec(address, purpose="scrub")) as vm:
            for step in guest.scrub(vm, address):
                yield ScrubProgress(
                    module_id=module_id,
                    phase=step.phase,
                    percent=step.percent,
                    detail=step.detail,
                    ok=step.ok,
                )
                if not step.ok:
                    yield ScrubProgress(
                        module_id=module_id,
                        phase=step.phase,
                        percent=step.percent,
                        detail=step.detail,
                        done=True,
                        ok=False,
                    )
                    return
            self._remember(address, guest.read_gpu(vm, address))
        yield ScrubProgress(module_id=module_id, phase="done", percent=100.0, done=True)

    def check_firmware(self, module_id: int) -> FirmwareStatus:
        address = self._offerable_address(module_id)
        guest = self._guest()
        with self.service_vms.running(gpu_vm_spec(address, purpose="firmware")) as vm:
            report = guest.read_gpu(vm, address)
        self._remember(address, report)
        return self._status(module_id, report.firmware_version)

    def level_firmware(self, module_id: int) -> FirmwareStatus:
        """Re-flash the pinned VBIOS if the GPU's differs; read it back to confirm."""
        address = self._offerable_address(module_id)
        guest = self._guest()
        pinned = self.platform.pinned_firmware
        with self.service_vms.running(gpu_vm_spec(address, purpose="firmware")) as vm:
            report = guest.read_gpu(vm, address)
            if report.firmware_version != pinned:
                log.info("flashing GPU %d (%s) from %s to %s", module_id, address, report.firmware_version, pinned)
                guest.flash_firmware(vm, address, pinned)
                report = guest.read_gpu(vm, address)
        self._remember(address, report)
        status = self._status(module_id, report.firmware_version)
        if not status.matches:
            raise HardwareError(f"GPU {module_id} still reports VBIOS {status.version} after flashing {pinned}")
        return status

    def reset_gpu(self, module_id: int) -> None:
        """Reset through the kernel's sysfs `reset` (FLR or bus reset, as VFIO would do it)."""
        address = self._address(module_id)
        reset = self.sysfs.device_dir(address) / "reset"
        if not reset.exists():
            raise FailedPrecondition(f"GPU {module_id} ({address}) offers no reset method")
        self.write(reset, "1")

    # -- holders ---------------------------------------------------------------------------------

    def gpu_holders(self, module_id: int) -> tuple[GpuHolder, ...]:
        return self.vfio_holders.holders(self._vfio_paths(self._address(module_id)))

    def evict_gpu_holders(self, module_id: int) -> tuple[GpuHolder, ...]:
        address = self._address(module_id)
        return self.vfio_holders.evict(self._vfio_paths(address), what=f"GPU {module_id} ({address})")

    def _vfio_paths(self, address: str) -> frozenset[str]:
        try:
            group = self.sysfs.read_function(address).iommu_group
        except MalformedEntry as exc:
            raise FailedPrecondition(f"{address}: unreadable sysfs entry: {exc}") from None
        return vfio_device_paths(group, self.sysfs.device_dir(address))

    # -- events ----------------------------------------------------------------------------------

    def watch_health(self) -> Iterator[HealthEvent]:
        """The journal's health events; while following, also a FABRIC_MANAGER_RESTARTED event
        (module id 0) each time a probe finds the fabric manager restarted and waiting for the list."""
        probing = self.follow_journal and self.fabric_manager_poll_s > 0
        if not probing:
            if self.journal is None:
                return iter(())
            return self.journal.health(self.hostname, follow=self.follow_journal, stop=self.stop)
        return self._health_and_restarts()

    def _health_and_restarts(self) -> Iterator[HealthEvent]:
        detector = RestartDetector(self.fabric_manager, self.hostname)
        wait = min(self.fabric_manager_poll_s, self.journal.poll_s if self.journal else self.fabric_manager_poll_s)
        position, next_probe = 0, 0.0
        while not self.stop.is_set():
            if self.journal is not None:
                events, position = self.journal.health_from(self.hostname, position)
                yield from events
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + self.fabric_manager_poll_s
                restarted = detector.poll()
                if restarted is not None:
                    yield restarted
            self.stop.wait(wait)

    def watch_boot(self, vm_id: str) -> Iterator[BootPhaseEvent]:
        if self.journal is None:
            raise NotFound(f"no boot journal on this host for VM {vm_id}")
        return self.journal.boot(vm_id, follow=self.follow_journal, stop=self.stop)

    # -- helpers ---------------------------------------------------------------------------------

    def _address(self, module_id: int) -> str:
        address = self.board_map.address_of(module_id)
        if address is None:
            raise NotFound(f"no GPU module {module_id} on {self.platform.key}")
        if not self.sysfs.device_dir(address).exists():
            raise NotFound(f"GPU module {module_id} ({address}) is not on the PCI bus")
        return address

    def _offerable_address(self, module_id: int) -> str:
        address = self._address(module_id)
        discovery = self.sysfs.discover()
        gpu = next((g for g in discovery.gpus if g.function.address == address), None)
        if gpu is None:
            raise FailedPrecondition(f"{address} (module {module_id}) is not a readable NVIDIA GPU")
        if not gpu.alone_in_iommu_group:
            raise FailedPrecondition(f"GPU {module_id} ({address}) is not alone in its IOMMU group")
        return address

    def _guest(self) -> GuestRunner:
        if self.guest is None:
            raise FailedPrecondition("no service-VM guest runner is configured on this host")
        return self.guest

    def _remember(self, address: str, report: GpuReport) -> None:
        if self.records is not None:
            self.records.put(address, report)

    def _status(self, module_id: int, version: str) -> FirmwareStatus:
        pinned = self.platform.pinned_firmware
        return FirmwareStatus(module_id=module_id, version=version, pinned=pinned, matches=version == pinned)


def _switch_mgmt(discovery: Discovery) -> PciDevice | None:
    """The Switchtec endpoint, preferring the one inside an NVSwitch IOMMU group."""
    in_group = [fn for fn in discovery.switch_mgmt if fn.iommu_group in discovery.switch_groups]
    chosen = (in_group or list(discovery.switch_mgmt) or [None])[0]
    return chosen.to_device() if chosen is not None else None


def _positive_int(path: Path) -> bool:
    try:
        return int(path.read_text().strip()) > 0
    except (OSError, ValueError):
        return False
