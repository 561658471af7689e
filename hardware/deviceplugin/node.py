"""The device plugin as part of a node agent: CDI spec, plugin socket, kubelet registration, health.

`NodeDevicePlugin(backend, lease_book)` ties the pieces together for one host:

- the devices come from the backend's inventory (`InventoryDeviceSource`: index = module id,
  `/dev/vfio/<iommu group>`), followed through its health stream and a periodic re-read, so a GPU
  lost to an Xid 79 turns Unhealthy in ListAndWatch;
- the CDI spec for those GPUs is written to `cdi_dir` at start and rewritten when a GPU's index
  or IOMMU group changes (a GPU going Unhealthy stays in the spec: containerd never sees a hole);
- the plugin serves on `<kubelet_dir>/<endpoint>` and registers with `<kubelet_dir>/kubelet.sock`,
  again after every kubelet restart (`DevicePluginServer.watch_kubelet`);
- Allocate reads the lease book the agent fills from the console's SetGpuLeases.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from hardware import cdi
from hardware.deviceplugin.inventory import InventoryDeviceSource
from hardware.deviceplugin.leases import LeaseBook
from hardware.deviceplugin.server import DEFAULT_ENDPOINT, DEFAULT_PLUGIN_DIR, KUBELET_POLL_S, DevicePluginServer
from hardware.deviceplugin.servicer import AllocateMode, DevicePluginServicer
from hardware.types import HealthEvent, Inventory

HEALTH_POLL_S = 5.0


class InventorySource(Protocol):
    """What the plugin needs of a host: a HostBackend, or an AgentClient (`get_inventory`) adapted."""

    def inventory(self) -> Inventory: ...

    def watch_health(self) -> Iterator[HealthEvent]: ...


class NodeDevicePlugin:
    """One node's device plugin; `start()` / `stop()`."""

    def __init__(
        self,
        backend: InventorySource,
        book: LeaseBook,
        *,
        kubelet_dir: Path | str = DEFAULT_PLUGIN_DIR,
        cdi_dir: Path | str = cdi.DEFAULT_DIRECTORY,
        endpoint: str = DEFAULT_ENDPOINT,
        mode: AllocateMode = AllocateMode.CDI,
        health_poll: float = HEALTH_POLL_S,
        kubelet_poll: float = KUBELET_POLL_S,
        watch_health: bool = True,
    ) -> None:
        self.cdi_dir = Path(cdi_dir)
        self.kubelet_poll = kubelet_poll
        self.source = InventoryDeviceSource(
            backend.inventory, backend.watch_health if watch_health else None, poll_interval=health_poll
        )
        self.servicer = DevicePluginServicer(self.source, book, mode=mode, poll_interval=health_poll)
        self.server = DevicePluginServer(self.servicer, plugin_dir=kubelet_dir, endpoint=endpoint)
        self._spec_lock = threading.Lock()
        self._written: tuple[tuple[int, int], ...] | None = None
        self.cdi_path: Path | None = None
        self.source.subscribe(self._write_cdi_spec)

    def _write_cdi_spec(self) -> None:
        devices = self.source.devices()
        layout = tuple((d.index, d.iommu_group) for d in devices)
        with self._spec_lock:
            if layout == self._written:
                return
            self.cdi_path = cdi.write_cdi_spec(devices, self.cdi_dir)
            self._written = layout

    def start(self) -> None:
        """Write the CDI spec, follow the host's health, listen, and register (now and after kubelet restarts)."""
        self._write_cdi_spec()
        self.source.start()
        try:
            self.server.watch_kubelet(self.kubelet_poll)
        except Exception:
            self.source.stop()
            raise

    def stop(self) -> None:
        self.server.stop(grace=0)
        self.source.stop()

