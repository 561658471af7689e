"""The GPUs a node offers to the kubelet, and their health."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

HEALTHY = "Healthy"  # the kubelet's constants (deviceplugin/v1beta1/constants.go)
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True)
class PluginDevice:
    """One GPU as the plugin announces it; the device id the kubelet sees is `str(index)`."""

    index: int
    iommu_group: int
    healthy: bool = True
    numa_node: int | None = None

    @property
    def device_id(self) -> str:
        return str(self.index)


class DeviceSource(Protocol):
    """Where the plugin reads the node's GPUs from (the host backend, or a fixed list)."""

    def devices(self) -> Sequence[PluginDevice]:
        """The GPUs now, with their health."""


class StaticDeviceSource:
    """A list of GPUs whose health can be changed; listeners hear about every change."""

    def __init__(self, devices: Sequence[PluginDevice]):
        self._lock = threading.Lock()
        self._devices = {d.index: d for d in devices}
        self._listeners: list[Callable[[], None]] = []

    def devices(self) -> Sequence[PluginDevice]:
        with self._lock:
            return tuple(self._devices[i] for i in sorted(self._devices))

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def set_health(self, index: int, healthy: bool) -> None:
        with self._lock:
            self._devices[index] = replace(self._devices[index], healthy=healthy)
        for listener in list(self._listeners):
            listener()
