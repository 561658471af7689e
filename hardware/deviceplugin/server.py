"""Serve the device plugin on its unix socket and register it with the kubelet.

The kubelet listens on `<plugin_dir>/kubelet.sock` (Registration service); the plugin listens on
`<plugin_dir>/<endpoint>` and tells the kubelet that name, the resource (`nvidia.com/gpu`) and its
options. The kubelet then calls back on our socket.

Kubelet restarts: a restarting kubelet recreates `kubelet.sock` (and removes the plugin sockets it
finds in the directory) and forgets every plugin, which must register again. `watch_kubelet()`
runs a thread that polls `os.stat(kubelet.sock)` every `interval` seconds (no inotify in the
standard library; a one-second poll is what the kubelet's own plugin watcher tolerates) and
registers whenever the socket's identity (inode, ctime) differs from the one it last registered
with, or the socket was seen missing in between (an inode number can be reused). If our own socket
is gone, the gRPC server is started again first. A failed registration is retried every interval,
and a kubelet that is not up yet is simply waited for.
"""

from __future__ import annotations

import logging
import os
import threading
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
KUBELET_POLL_S = 1.0

log = logging.getLogger(__name__)


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
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.registrations = 0  # successful registrations (the watcher's, and `register()`'s)
        self.registered = threading.Condition()

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / self.endpoint

    @property
    def kubelet_path(self) -> Path:
        return self.plugin_dir / self.kubelet_socket

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
        with self.registered:
            self.registrations += 1
            self.registered.notify_all()

    def wait_registered(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until the plugin has registered `count` times in all; False on timeout."""
        with self.registered:
            return self.registered.wait_for(lambda: self.registrations >= count, timeout)

    # -- following the kubelet -----------------------------------------------------------------
    def _kubelet_identity(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.kubelet_path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino, st.st_ctime_ns)

    def watch_kubelet(self, interval: float = KUBELET_POLL_S, timeout: float = 5.0) -> None:
        """Listen if not yet listening, then (re-)register in a thread whenever the kubelet (re)starts."""
        if self._server is None:
            self.start()
        self._watch_stop.clear()
        self._watcher = threading.Thread(
            target=self._watch_loop, args=(interval, timeout), name="dp-kubelet-watch", daemon=True
        )
        self._watcher.start()

    def _watch_loop(self, interval: float, timeout: float) -> None:
        registered_with = None
        wait = 0.0
        while not self._watch_stop.wait(wait):
            wait = interval
            identity = self._kubelet_identity()
            if identity is None:
                registered_with = None  # the kubelet is down: register with whichever comes next
                continue
            if identity == registered_with and self.socket_path.exists():
                continue
            try:
                if not self.socket_path.exists():  # a restarting kubelet removes plugin sockets
                    log.info("plugin socket %s gone: listening again", self.socket_path)
                    self._stop_server(0)
                    self.start()
                self.register(timeout)
                registered_with = identity
                log.info("registered %s with the kubelet at %s", self.resource_name, self.kubelet_path)
            except (RegistrationFailed, OSError) as exc:
                log.warning("%s; retrying in %.1fs", exc, interval)

    def serve(self, timeout: float = 5.0) -> None:
        """Start and register."""
        self.start()
        try:
            self.register(timeout)
        except RegistrationFailed:
            self.stop()
            raise

    def _stop_server(self, grace: float | None) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def stop(self, grace: float | None = 1.0) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(10)
            self._watcher = None
        self.servicer.stop()
        self._stop_server(grace)
        self.socket_path.unlink(missing_ok=True)
