"""SimHost: one simulated GPU server behind the HostBackend interface, plus simulator-only controls.

Deterministic: the same (seed, hostname, platform, variant) gives the same serials, UUIDs and
inventory, so LinuxHost's discovery of the sysfs folder this host writes can be compared with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hardware.boot_model import estimate_boot
from hardware.exceptions import FailedPrecondition, GpuBusy, InvalidArgument, NotFound
from hardware.isolation import GroupMember, group_blockers, isolation_reason
from hardware.platforms import Platform, get_platform
from hardware.types import (
    BootPhaseEvent,
    DeviceKind,
    FirmwareStatus,
    GpuHolder,
    GpuInfo,
    HealthEvent,
    HealthKind,
    Inventory,
    PartitionInfo,
    ScrubProgress,
    VmInfo,
    VmState,
)
from hardware.xid import xid_entry
from simulator.clock import SimClock
from simulator.events import EventHub, Subscription
from simulator.fabric_manager import DEFAULT_FM_VERSION, RESTART_WINDOW_S, FabricManager
from simulator.host_features import HostFeatures
from simulator.pci import PASSTHROUGH_DRIVER, SimPciDevice, build_pci_tree
from simulator.vm import BootWatch, SimVm

AGENT_VERSION = "sim-0.1.0"
IDLE_TEMPERATURE_C = 30.0
LOADED_TEMPERATURE_C = 64.0  # an H100 SXM under a steady training load, well under its slowdown
TEMPERATURE_STEP_C = 1.0  # telemetry reports a GPU's temperature when it moved at least this much,
TEMPERATURE_REFRESH_SAMPLES = 6  # or this many samples passed (a watcher that connected later hears it)
_BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")

# Simulated durations (seconds) of slow operations; the clock's acceleration shortens them.
SCRUB_STEPS = (("boot-vm", 25.0), ("reset", 5.0), ("clear", 0.05), ("verify", 3.0))
FIRMWARE_FLASH_S = 90.0
GPU_RESET_S = 5.0
VM_PROCESS_NAME = "qemu-system-x86_64"  # what a simulated VM's process is called (GpuHolder.name)
FIRST_VM_PID = 1000
PID_SPAN = 4_000_000  # under the kernel's pid_max (4194304)


@dataclass(slots=True)
class SimGpu:
    module_id: int
    pci: SimPciDevice
    uuid: str
    serial: str
    firmware: str
    lost: bool = False
    temperature_c: float = IDLE_TEMPERATURE_C
    reported_c: float | None = None  # the temperature last sent as telemetry
    samples_unreported: int = 0
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    row_remaps: int = 0
    row_remaps_pending: int = 0
    nvlink_errors: int = 0
    fail_next_scrub: bool = False
    operation: str = ""  # a scrub, reset or flash in progress: the GPU is not free for anything else


class _GpuOperation(Iterator[ScrubProgress]):
    """Streams an operation's steps and frees the GPU when they end or the caller closes the stream."""

    def __init__(self, host: SimHost, gpu: SimGpu, steps: Iterator[ScrubProgress]) -> None:
        self._host, self._gpu, self._steps = host, gpu, steps

    def __next__(self) -> ScrubProgress:
        try:
            return next(self._steps)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        self._host._end_operation(self._gpu)
        with contextlib.suppress(ValueError):  # still running in another thread: it ends on its own
            self._steps.close()


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


def vm_pid(hostname: str, vm_id: str) -> int:
    """The stable fake pid of a simulated VM's process."""
    return FIRST_VM_PID + int.from_bytes(_digest(hostname, vm_id)[:4], "big") % PID_SPAN


def gpu_identity(seed: int, hostname: str, module_id: int) -> tuple[str, str]:
    """Deterministic (uuid, serial) of a GPU, shaped like nvidia-smi prints them."""
    h = _digest(seed, hostname, module_id).hex()
    uuid = f"GPU-{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
    serial = "1654" + str(int(h[32:48], 16) % 10**9).zfill(9)
    return uuid, serial


class SimHost:
    """A simulated server. Thread-safe: the agent serves it from a pool of threads."""

    def __init__(
        self,
        hostname: str,
        platform: Platform | str,
        variant: str | None = None,
        *,
        clock: SimClock | None = None,
        hub: EventHub | None = None,
        seed: int = 0,
        host_kernel: str = "old",
        iommu_backend: str = "vfio-type1",
        plug_mode: str = "hot",
        hugepages: bool = False,
        guest_kernel: str = "5.15.0",
        init_system: str = "systemd",
        qemu_version: str | None = None,
        guest_firmware: str = "ovmf",
        features: HostFeatures | None = None,
        fm_version: str = DEFAULT_FM_VERSION,
        firmware: dict[int, str] | None = None,
        isolate_gpus: bool = False,
    ) -> None:
        self.hostname = hostname
        self.platform = get_platform(platform) if isinstance(platform, str) else platform
        self.variant = self.platform.variant(variant) if variant else self.platform.variants[0]
        self.clock = clock or SimClock()
        self.hub = hub or EventHub()
        self.seed = seed
        # What its VMs boot on (`features` wins over the single options; `old`/`fixed` name a release).
        self.features = features or HostFeatures.build(
            host_kernel=host_kernel, qemu_version=qemu_version, iommu_backend=iommu_backend, hugepages=hugepages,
            plug_mode=plug_mode, guest_kernel=guest_kernel, guest_firmware=guest_firmware, init_system=init_system,
        )
        self.iommu_backend, self.hugepages = self.features.iommu_backend, self.features.hugepages
        self._lock = threading.Lock()
        self.devices = build_pci_tree(self.platform, self.variant)
        self._boot_drivers = {d.address: d.driver for d in self.devices}  # what a reboot binds again
        self.gpus: dict[int, SimGpu] = {}
        for dev in self.devices:
            if dev.kind is DeviceKind.GPU:
                uuid, serial = gpu_identity(seed, hostname, dev.module_id)
                fw = (firmware or {}).get(dev.module_id, self.platform.pinned_firmware)
                self.gpus[dev.module_id] = SimGpu(dev.module_id, dev, uuid, serial, fw)
        self.vms: dict[str, SimVm] = {}
        # The node agent process: while down every NodeAgent call answers UNAVAILABLE
        # (simulator.agent.AgentSwitch) and nothing is reported; the host and its VMs run on.
        self.agent_up = True
        # isolate_gpus: the console's idle baseline, every GPU in its own active 1-GPU partition,
        # is the fabric manager's boot configuration (also after a reboot).
        self.fabric_manager = FabricManager(
            self.platform,
            self.clock,
            busy_modules=self.busy_modules,
            version=fm_version,
            active=(p.id for p in self.platform.partitions if p.size == 1) if isolate_gpus else (),
            on_restart=self._fabric_manager_restarted,
        )

    # -- helpers -------------------------------------------------------------------------
    def busy_modules(self) -> dict[int, str]:
        """Module id → VM holding it (booting or running)."""
        now = self.clock.seconds()
        return {m: vm.vm_id for vm in list(self.vms.values()) if vm.holds_gpus(now) for m in vm.modules}

    def _gpu(self, module_id: int, *, present: bool = True) -> SimGpu:
        gpu = self.gpus.get(module_id)
        if gpu is None:
            raise NotFound(f"{self.hostname}: no GPU with module id {module_id}")
        if present and gpu.lost:
            raise FailedPrecondition(f"{self.hostname}: GPU {module_id} fell off the bus; reboot the host")
        return gpu

    def _require_idle(self, module_id: int, doing: str) -> None:
        vm = self.busy_modules().get(module_id)
        if vm:
            raise FailedPrecondition(f"{self.hostname}: cannot {doing} GPU {module_id}: in use by VM {vm}")
        busy = self.gpus[module_id].operation
        if busy:
            raise GpuBusy(f"{self.hostname}: cannot {doing} GPU {module_id}: {busy} in progress")

    def _begin_operation(self, module_id: int, doing: str) -> SimGpu:
        """Check the GPU is present and idle and mark it busy (call with the lock held)."""
        gpu = self._gpu(module_id)
        self._require_idle(module_id, doing)
        gpu.operation = doing
        return gpu

    def _end_operation(self, gpu: SimGpu) -> None:
        with self._lock:
            gpu.operation = ""

    def _device(self, address: str) -> SimPciDevice:
        if not _BDF_RE.match(address):
            raise InvalidArgument(f"malformed PCI address {address!r} (want dddd:bb:dd.f)")
        for dev in self.devices:
            if dev.address == address and not (dev.module_id and self.gpus[dev.module_id].lost):
                return dev
        raise NotFound(f"{self.hostname}: no PCI device {address}")

    def _emit(self, module_id: int, kind: HealthKind, **fields) -> HealthEvent:
        event = HealthEvent(hostname=self.hostname, module_id=module_id, kind=kind, at=self.clock.now(), **fields)
        if self.agent_up:  # a stopped agent reports nothing; the hardware's counters still moved
            self.hub.publish(event)
        return event

    def _group_members(self, dev: SimPciDevice) -> list[GroupMember]:
        return [
            GroupMember(d.address, d.vendor_id, d.device_id, d.class_code)
            for d in self.devices
            if d.iommu_group == dev.iommu_group and d.address != dev.address
        ]

    def _isolation_reason(self, dev: SimPciDevice) -> str:
        return isolation_reason(
            address=dev.address, iommu_group=dev.iommu_group, driver=dev.driver, members=self._group_members(dev)
        )

    # -- HostBackend ---------------------------------------------------------------------
    def inventory(self) -> Inventory:
        with self._lock:
            gpus = tuple(
                GpuInfo(
                    pci=g.pci.snapshot(),
                    module_id=g.module_id,
                    uuid=g.uuid,
                    serial=g.serial,
                    vram_mib=self.platform.vram_mib,
                    firmware_version=g.firmware,
                    alone_in_iommu_group=not group_blockers(g.pci.address, self._group_members(g.pci)),
                    isolation_reason=self._isolation_reason(g.pci),
                )
                for g in sorted(self.gpus.values(), key=lambda g: g.pci.address)
                if not g.lost
            )
            switches = tuple(d.snapshot() for d in self.devices if d.kind is DeviceKind.NVSWITCH)
            mgmt = next((d.snapshot() for d in self.devices if d.kind is DeviceKind.SWITCH_MGMT), None)
        return Inventory(
            hostname=self.hostname,
            platform=self.platform.key,
            variant=self.variant.key,
            gpus=gpus,
            nvswitches=switches,
            switch_mgmt=mgmt,
            agent_version=AGENT_VERSION,
            fabric_manager_version=self.fabric_manager.version,
            host_kernel=self.features.host_kernel,
            iommu_backend=self.features.iommu_backend,
            plug_mode=self.features.plug_mode,
            hugepages=self.features.hugepages,
            qemu_version=self.features.qemu_version,
            guest_kernel=self.features.guest_kernel,
            guest_firmware=self.features.guest_firmware,
            init_system=self.features.init_system,
        )

    def bind_vfio(self, address: str) -> None:
        with self._lock:
            dev = self._device(address)
            if dev.kind is None:
                raise InvalidArgument(f"{address} is not a GPU, NVSwitch or switch endpoint")
            dev.driver = PASSTHROUGH_DRIVER

    def unbind_vfio(self, address: str) -> None:
        with self._lock:
            dev = self._device(address)
            if dev.kind is None:
                raise InvalidArgument(f"{address} is not a GPU, NVSwitch or switch endpoint")
            if dev.module_id is not None:
                self._require_idle(dev.module_id, "unbind")
            dev.driver = None

    def list_partitions(self) -> list[PartitionInfo]:
        return self.fabric_manager.list()

    def activate_partition(self, partition_id: int) -> None:
        self.fabric_manager.activate(partition_id)

    def deactivate_partition(self, partition_id: int) -> None:
        self.fabric_manager.deactivate(partition_id)

    def set_activated_partitions(self, partition_ids: Iterable[int]) -> None:
        self.fabric_manager.set_activated(partition_ids)

    def scrub_gpu(self, module_id: int) -> Iterator[ScrubProgress]:
        """Validate now (so errors reach the caller before the stream starts), then stream steps."""
        with self._lock:
            gpu = self._begin_operation(module_id, "scrub")
            fail = gpu.fail_next_scrub
            gpu.fail_next_scrub = False
        return _GpuOperation(self, gpu, self._scrub_steps(gpu, fail))

    def _scrub_steps(self, gpu: SimGpu, fail: bool) -> Iterator[ScrubProgress]:
        m = gpu.module_id
        for i, (phase, seconds) in enumerate(SCRUB_STEPS):
            yield ScrubProgress(m, phase, 100.0 * i / len(SCRUB_STEPS), f"{phase} ({seconds:g} s)")
            self.clock.sleep(seconds)
            if gpu.lost:
                yield ScrubProgress(m, phase, 100.0 * i / len(SCRUB_STEPS), "GPU fell off the bus", done=True, ok=False)
                return
            if phase == "reset":
                self._apply_reset(gpu)
            if phase == "verify" and fail:
                yield ScrubProgress(
                    m,
                    phase,
                    100.0 * (i + 1) / len(SCRUB_STEPS),
                    "verify failed: memory pattern mismatch",
                    done=True,
                    ok=False,
                )
                return
        yield ScrubProgress(m, "done", 100.0, "VRAM cleared and verified", done=True, ok=True)

    def _apply_reset(self, gpu: SimGpu) -> None:
        with self._lock:
            # Pending row remaps take effect at reset; volatile ECC counters clear.
            gpu.row_remaps += gpu.row_remaps_pending
            gpu.row_remaps_pending = 0
            gpu.ecc_corrected = gpu.ecc_uncorrected = 0
            gpu.temperature_c = IDLE_TEMPERATURE_C

    def check_firmware(self, module_id: int) -> FirmwareStatus:
        with self._lock:
            gpu = self._gpu(module_id)
            pinned = self.platform.pinned_firmware
            return FirmwareStatus(module_id, gpu.firmware, pinned, gpu.firmware == pinned)

    def level_firmware(self, module_id: int) -> FirmwareStatus:
        with self._lock:
            gpu = self._begin_operation(module_id, "level firmware of")
        try:
            if gpu.firmware != self.platform.pinned_firmware:
                self.clock.sleep(FIRMWARE_FLASH_S)
                with self._lock:
                    gpu.firmware = self.platform.pinned_firmware
        finally:
            self._end_operation(gpu)
        return self.check_firmware(module_id)

    def reset_gpu(self, module_id: int) -> None:
        with self._lock:
            gpu = self._begin_operation(module_id, "reset")
        try:
            self.clock.sleep(GPU_RESET_S)
            self._apply_reset(gpu)
        finally:
            self._end_operation(gpu)

    def gpu_holders(self, module_id: int) -> tuple[GpuHolder, ...]:
        """The VM (booting or running) holding the GPU, as the process a real host would list."""
        with self._lock:
            self._gpu(module_id, present=False)
            vm_id = self.busy_modules().get(module_id)
        if vm_id is None:
            return ()
        return (GpuHolder(pid=vm_pid(self.hostname, vm_id), name=VM_PROCESS_NAME, vm_id=vm_id),)

    def evict_gpu_holders(self, module_id: int) -> tuple[GpuHolder, ...]:
        """Stop the VMs holding the GPU; returns them (empty when none did)."""
        holders = self.gpu_holders(module_id)
        for holder in holders:
            self.stop_vm(holder.vm_id)
        left = self.gpu_holders(module_id)
        if left:
            names = ", ".join(h.vm_id for h in left)
            raise FailedPrecondition(f"{self.hostname}: GPU {module_id} is still held after eviction by VM {names}")
        return holders

    def watch_health(self) -> Subscription:
        return self.hub.subscribe(self.hostname)

    def watch_boot(self, vm_id: str) -> Iterator[BootPhaseEvent]:
        with self._lock:
            vm = self.vms.get(vm_id)
            if vm is None:
                raise NotFound(f"{self.hostname}: no VM {vm_id!r}")
        return BootWatch(vm, self.clock, self._lock)

    # -- simulator controls (SimAdmin) ----------------------------------------------------
    def start_vm(
        self,
        vm_id: str,
        pod_name: str,
        modules: Iterable[int],
        guest_ram_gib: int,
        workload_seconds: float = 0.0,
    ) -> VmInfo:
        """Play kubelet + Kata starting a VM with these GPUs (they must be bound to vfio-pci)."""
        mods = tuple(modules)
        if not vm_id:
            raise InvalidArgument("vm_id is required")
        if len(set(mods)) != len(mods):
            raise InvalidArgument("a GPU is listed twice")
        if guest_ram_gib <= 0 or workload_seconds < 0:
            raise InvalidArgument("guest_ram_gib must be > 0 and workload_seconds >= 0")
        with self._lock:
            if vm_id in self.vms and self.vms[vm_id].holds_gpus(self.clock.seconds()):
                raise FailedPrecondition(f"{self.hostname}: VM {vm_id} already exists")
            busy = self.busy_modules()
            for m in mods:
                gpu = self._gpu(m)
                if m in busy:
                    raise FailedPrecondition(f"{self.hostname}: GPU {m} in use by VM {busy[m]}")
                if gpu.operation:
                    raise GpuBusy(f"{self.hostname}: GPU {m}: {gpu.operation} in progress")
                if gpu.pci.driver != PASSTHROUGH_DRIVER:
                    raise FailedPrecondition(f"{self.hostname}: GPU {m} is not bound to vfio-pci")
                reason = self._isolation_reason(gpu.pci)
                if reason:  # VFIO refuses a group that is not viable (a member on a host driver)
                    raise FailedPrecondition(f"{self.hostname}: GPU {m} cannot be assigned: {reason}")
            estimate = estimate_boot(
                len(mods), platform=self.platform, guest_ram_gib=guest_ram_gib, **self.features.boot_arguments()
            )
            unpartitioned = sorted(set(mods) - self.fabric_manager.active_modules())
            failure = (
                f"CUDA error 802 (system not yet initialized): GPU(s) {unpartitioned} in no active partition"
                if unpartitioned
                else ""
            )
            now = self.clock.seconds()
            vm = SimVm(vm_id, pod_name, mods, guest_ram_gib, workload_seconds, now, estimate, failure)
            self.vms[vm_id] = vm
            return vm.info(self.clock, now)

    def stop_vm(self, vm_id: str) -> VmInfo:
        with self._lock:
            vm = self._vm(vm_id)
            now = self.clock.seconds()
            vm.end(now, VmState.STOPPED, "stopped")
            return vm.info(self.clock, now)

    def get_vm(self, vm_id: str) -> VmInfo:
        with self._lock:
            return self._vm(vm_id).info(self.clock, self.clock.seconds())

    def list_vms(self) -> list[VmInfo]:
        with self._lock:
            now = self.clock.seconds()
            return [vm.info(self.clock, now) for vm in self.vms.values()]

    def _vm(self, vm_id: str) -> SimVm:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise NotFound(f"{self.hostname}: no VM {vm_id!r}")
        return vm

    def flash_firmware(self, module_id: int, version: str) -> None:
        """A tenant flashed other firmware; LevelFirmware must find and fix it."""
        if not version:
            raise InvalidArgument("version is required")
        with self._lock:
            self._gpu(module_id).firmware = version

    def restart_fabric_manager(self) -> None:
        """The fabric manager restarts; the health stream says so (FABRIC_MANAGER_RESTARTED)."""
        self.fabric_manager.restart()

    def _fabric_manager_restarted(self) -> None:
        self._emit(
            0,
            HealthKind.FABRIC_MANAGER_RESTARTED,
            message=f"fabric manager restarted: waiting {RESTART_WINDOW_S:g} s for SetActivatedPartitions",
        )

    def set_agent_up(self, up: bool) -> None:
        """Stop the node agent (its open health streams end, every call answers UNAVAILABLE) or start
        it again. Simulates a crashed or restarted agent process, not a host that is down."""
        self.agent_up = up
        if not up:
            self.hub.close_host(self.hostname)

    def reboot(self) -> None:
        """Reboot the host: VMs stop, lost GPUs come back, a fresh fabric manager starts."""
        with self._lock:
            now = self.clock.seconds()
            for vm in self.vms.values():
                vm.end(now, VmState.STOPPED, "host rebooted")
            for gpu in self.gpus.values():
                gpu.lost = False
                gpu.pci.driver = self._boot_drivers[gpu.pci.address]
            self.fabric_manager.reset()
        for gpu in self.gpus.values():
            self._apply_reset(gpu)

    def fail_next_scrub(self, module_id: int) -> None:
        with self._lock:
            self._gpu(module_id).fail_next_scrub = True

    def inject_xid(self, module_id: int, xid: int) -> HealthEvent:
        """An Xid with its consequences: ECC counters, row remaps, NVLink errors, a lost GPU."""
        if xid <= 0:
            raise InvalidArgument("xid must be > 0")
        entry = xid_entry(xid)
        with self._lock:
            gpu = self._gpu(module_id)
            if xid in (48, 95, 140) or xid == 94:
                gpu.ecc_uncorrected += 1
            elif xid == 92:
                gpu.ecc_corrected += 100
            elif xid == 63:
                gpu.row_remaps_pending += 1
            elif xid == 74:
                gpu.nvlink_errors += 1
            if entry.gpu_lost:
                gpu.lost = True
                now = self.clock.seconds()
                for vm in self.vms.values():
                    if module_id in vm.modules:
                        vm.end(now, VmState.FAILED, f"Xid {xid}: GPU {module_id} fell off the bus")
        event = self._emit(
            module_id,
            HealthKind.XID,
            xid=xid,
            action=entry.action.value,
            message=entry.meaning,
            ecc_uncorrected=gpu.ecc_uncorrected,
            row_remaps=gpu.row_remaps + gpu.row_remaps_pending,
        )
        if xid in (48, 94, 95, 140):
            self._emit(
                module_id,
                HealthKind.ECC,
                ecc_corrected=gpu.ecc_corrected,
                ecc_uncorrected=gpu.ecc_uncorrected,
                message="uncorrectable ECC error",
            )
        elif xid in (63, 64):
            self._emit(
                module_id,
                HealthKind.ROW_REMAP,
                row_remaps=gpu.row_remaps + gpu.row_remaps_pending,
                message="row remap pending" if xid == 63 else "row remap failed",
            )
        elif xid == 74:
            self._emit(module_id, HealthKind.NVLINK, nvlink_errors=gpu.nvlink_errors, message=entry.meaning)
        if entry.gpu_lost:
            self._emit(
                module_id,
                HealthKind.GPU_LOST,
                xid=xid,
                action=entry.action.value,
                message="GPU fell off the bus; gone from the PCI bus until the host reboots",
            )
        return event

    def inject_thermal(self, module_id: int, temperature_c: float = 0.0) -> HealthEvent:
        with self._lock:
            gpu = self._gpu(module_id)
            gpu.temperature_c = temperature_c or float(self.platform.slowdown_temp_c)
            t = gpu.temperature_c
        if t >= self.platform.shutdown_temp_c:
            message = "thermal shutdown"
        elif t >= self.platform.slowdown_temp_c:
            message = "thermal slowdown"
        elif t > self.platform.max_operating_temp_c:
            message = "above max operating temperature"
        else:
            message = "temperature"
        return self._emit(module_id, HealthKind.TEMPERATURE, temperature_c=t, message=message)

    def sample_temperatures(self, rng: random.Random) -> list[HealthEvent]:
        """One telemetry sample (what DCGM's field watches give a real agent): each GPU's temperature
        moves halfway towards idle or, in a booting or running VM, loaded (each GPU a few degrees
        apart, as a board's airflow makes them), with a little noise. Reported on the health stream
        when it moved by TEMPERATURE_STEP_C or more since last reported, was never reported, or was
        last reported TEMPERATURE_REFRESH_SAMPLES samples ago."""
        busy = self.busy_modules()
        moved: list[tuple[int, float]] = []
        with self._lock:
            for module_id, gpu in sorted(self.gpus.items()):
                if gpu.lost:
                    continue
                target = (LOADED_TEMPERATURE_C if module_id in busy else IDLE_TEMPERATURE_C) + module_id % 4
                gpu.temperature_c = round(gpu.temperature_c + (target - gpu.temperature_c) / 2 + rng.gauss(0, 0.4), 1)
                gpu.samples_unreported += 1
                if (gpu.reported_c is None or abs(gpu.temperature_c - gpu.reported_c) >= TEMPERATURE_STEP_C
                        or gpu.samples_unreported >= TEMPERATURE_REFRESH_SAMPLES):
                    gpu.reported_c, gpu.samples_unreported = gpu.temperature_c, 0
                    moved.append((module_id, gpu.temperature_c))
        return [self._emit(m, HealthKind.TEMPERATURE, temperature_c=t, message="temperature") for m, t in moved]

    def inject_nvlink(self, module_id: int, count: int = 1) -> HealthEvent:
        with self._lock:
            gpu = self._gpu(module_id)
            gpu.nvlink_errors += max(count, 1)
            total = gpu.nvlink_errors
        return self._emit(module_id, HealthKind.NVLINK, nvlink_errors=total, message="NVLink CRC/replay errors")
