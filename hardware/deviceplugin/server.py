"""Serve the device plugin on its unix socket and register it with the kubelet.

The kubelet listens on `<plugin_dir>/kubelet.sock` (Registration service); the plugin listens on
`<plugin_dir>/<endpoint>` and tells the kubelet that name, the resource (`nvidia.com/gpu`) and its
options. The kubelet then calls back on our socket.
"""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc

from hardware import kube_constants as kc
from hardware.deviceplugin.gen import api_pb2, api_pb2_grpc
from hardware.deviceplugin.servicer import DevicePluginServicer
from hardware.exceptions import HardwareError

API_VERSION = "v1beta1"
DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_ENDPOINT = "gpu-console-nvidia-gpu.sock"


class RegistrationFailed(HardwareError):
    """The kubelet refused the plugin or could not be reached; the plugin should exit and restart."""

    retryable = True


class DevicePluginServer:
    """One plugin: a gRPC server on `<plugin_dir>/<endpoint>` serving `servicer`."""

    def __init__(self, servicer: DevicePluginServicer, *, plugin_dir: Path | str = DEFAULT_PLUGIN_DIR,
                 endpoint: str = DEFAULT_ENDPOINT, kubelet_socket: str = KUBELET_SOCKET,
                 resource_name: str = kc.GPU_RESOURCE, max_workers: int = 8):
        self.servicer = servicer
        self.plugin_dir = Path(plugin_dir)
        self.endpoint = endpoint
        self.kubelet_socket = kubelet_socket
        self.resource_name = resource_name
        self._max_workers = max_workers
        self._server: grpc.Server | None = None

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / self.endpoint

    def start(self) -> None:
        """Listen on the plugin socket (a stale socket file from a previous run is removed)."""
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.servicer, server)
        if server.add_insecure_port(f"unix://{self.socket_path}") == 0:
            raise RegistrationFailed(f"cannot listen on {self.socket_path}")
        server.start()
        self._server = server

    def register(self, timeout: float = 5.0) -> None:
        """Register with the kubelet; raises RegistrationFailed when it refuses or is not there."""
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.endpoint,
            resource_name=self.resource_name,
            options=api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True),
        )
        target = f"unix://{self.plugin_dir / self.kubelet_socket}"
        try:
            with grpc.insecure_channel(target) as channel:
                api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise RegistrationFailed(f"kubelet registration at {target} failed: {exc.code().name} "
                                     f"{exc.details()}") from exc

    def serve(self, timeout: float = 5.0) -> None:
        """Start and register."""
        self.start()
        try:
            self.register(timeout)
        except RegistrationFailed:
            self.stop()
            raise

    def stop(self, grace: float | None = 1.0) -> None:
        self.servicer.stop()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        self.socket_path.unlink(missing_ok=True)
