"""The plugin's devices from a host's inventory, kept in step with it (seed 001, "CDI Device Plugin").

Every isolated GPU of the inventory with a module id is a device: index (= device id = CDI name)
is its module id, `/dev/vfio/<iommu group>` its node. A GPU that is not isolated
(`GpuInfo.isolation_reason`: it shares its IOMMU group with a NIC, or the host's driver holds it)
is left out, not listed as Unhealthy: `/dev/vfio/<group>` would hand the tenant the NIC too, an
Unhealthy device still counts in the node's capacity, and its CDI entry would name that group.
Allocate refuses it by name with its reason (`not_offered()`). A GPU once seen stays listed:
when it leaves the inventory (an Xid 79 takes it off the bus until the host reboots) it turns
Unhealthy, and Healthy again when it comes back. A GPU-lost health event (HealthKind.GPU_LOST, or
an Xid the catalog marks `gpu_lost`) turns it Unhealthy at once, before the inventory shows it,
and it stays so while the inventory still lists it.

Two threads keep the view current: one follows the backend's health stream (refresh on every
event, so Xid 79 reaches ListAndWatch within moments), one re-reads the inventory every
`poll_interval` seconds (the backstop for hosts without a health stream).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from hardware.deviceplugin.devices import PluginDevice
from hardware.types import HealthEvent, HealthKind, Inventory
from hardware.xid import xid_entry

log = logging.getLogger(__name__)


def _is_gpu_lost(event: HealthEvent) -> bool:
    if event.kind is HealthKind.GPU_LOST:
        return True
    return event.kind is HealthKind.XID and event.xid is not None and xid_entry(event.xid).gpu_lost


class InventoryDeviceSource:
    """A DeviceSource over `inventory()` (a backend's or an agent client's), with listeners."""

    def __init__(
        self,
        inventory: Callable[[], Inventory],
        watch_health: Callable[[], Iterator[HealthEvent]] | None = None,
        *,
        poll_interval: float = 5.0,
    ) -> None:
        self._inventory = inventory
        self._watch_health = watch_health
        self._poll = poll_interval
        self._lock = threading.Lock()
        self._devices: dict[int, PluginDevice] = {}
        self._lost: set[int] = set()
        self._refused: dict[str, str] = {}  # device id → why the GPU is not offered
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch: Iterator[HealthEvent] | None = None
        self.refresh()

    # -- DeviceSource --------------------------------------------------------------------------
    def devices(self) -> Sequence[PluginDevice]:
        with self._lock:
            return tuple(self._devices[i] for i in sorted(self._devices))

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def not_offered(self) -> dict[str, str]:
        """Device id → reason, for the inventory's GPUs that are not isolated (never offered)."""
        with self._lock:
            return dict(self._refused)

    # -- keeping in step -----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Re-read the inventory; tell the listeners and return True when anything changed."""
        inventory = self._inventory()
        gpus = [g for g in inventory.gpus if g.module_id is not None]
        present = {g.module_id: g for g in gpus if g.isolated and g.pci.iommu_group is not None}
        refused = {str(g.module_id): g.isolation_reason for g in gpus if g.module_id not in present}
        for device_id, reason in refused.items():
            if device_id not in self._refused:
                log.warning("GPU %s is not offered: %s", device_id, reason or "no IOMMU group")
        with self._lock:
            self._refused = refused
            self._lost &= set(present)  # gone from the inventory: presence decides from now on
            devices = dict(self._devices)
            for module_id, gpu in present.items():
                numa = gpu.pci.numa_node if gpu.pci.numa_node >= 0 else None
                devices[module_id] = PluginDevice(module_id, gpu.pci.iommu_group, module_id not in self._lost, numa)
            for module_id, device in self._devices.items():
                if module_id not in present and device.healthy:
                    devices[module_id] = PluginDevice(device.index, device.iommu_group, False, device.numa_node)
            changed = devices != self._devices
            self._devices = devices
        if changed:
            self._notify()
        return changed

    def mark_lost(self, module_id: int) -> None:
        """A GPU fell off the bus: Unhealthy now, whatever the inventory still says."""
        with self._lock:
            device = self._devices.get(module_id)
            if device is None:
                return
            self._lost.add(module_id)
            if not device.healthy:
                return
            self._devices[module_id] = PluginDevice(device.index, device.iommu_group, False, device.numa_node)
        self._notify()

    def handle(self, event: HealthEvent) -> None:
        if _is_gpu_lost(event):
            self.mark_lost(event.module_id)
        self._quiet_refresh()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener's failure must not stop health propagation
                log.exception("device listener failed")

    def _quiet_refresh(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # the backend may be briefly unable to answer
            log.warning("inventory refresh failed: %s", exc)

    # -- threads -------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._poll_loop, name="dp-inventory-poll", daemon=True)]
        if self._watch_health is not None:
            self._threads.append(threading.Thread(target=self._watch_loop, name="dp-health-watch", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        watch = self._watch
        close = getattr(watch, "close", None) or getattr(watch, "cancel", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._poll):
            self._quiet_refresh()

    def _watch_loop(self) -> None:
        assert self._watch_health is not None
        while not self._stop.is_set():
            try:
                self._watch = self._watch_health()
                if self._stop.is_set():
                    break
                for event in self._watch:
                    if self._stop.is_set():
                        break
                    self.handle(event)
            except Exception as exc:
                log.warning("health stream failed: %s", exc)
            self._stop.wait(self._poll)  # a host without a health stream ends it at once: no spinning
