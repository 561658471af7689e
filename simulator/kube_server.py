"""The simulated cluster as a Kubernetes API server: real HTTP on loopback, served by the simulator.

`manage.py simfleet` runs one next to the simulated agents, so the console reaches the simulated
cluster exactly as it reaches a real one, through `hardware.kube.KubernetesCluster` and the
official client, and the cluster's state (namespaces, network policies, Tenancy and GpuLease
resources, pods, cordons) lives in the fleet's process, not the console's: a console or worker
that crashes loses nothing, and the next one reads it all back.

It serves what `KubernetesCluster` uses, shaped as the real server shapes it (objects with kind,
apiVersion and metadata.uid/resourceVersion; lists with the store's version; Status objects with
404/409/410/422/429 codes for errors):
- `/api/v1/namespaces`, `/api/v1/nodes` (merge patches: cordon and uncordon),
  `/api/v1/namespaces/{ns}/pods` (create, get, delete, eviction) and `/api/v1/pods` (list and
  watch across namespaces, with label and field selectors, bookmarks and 410 Gone);
- `/apis/cilium.io/v2/namespaces/{ns}/ciliumnetworkpolicies`;
- `/apis/gpuconsole.dev/v1alpha1/tenancies` and `.../gpuleases` with their `status` subresources
  and finalizers (a delete waits until the finalizers are gone);
- `/version`, `/healthz`, `/readyz`, `/livez` and enough discovery (`/api`, `/apis`, each group
  version's resource list) for other Kubernetes clients.
Objects and their semantics are `simulator.kube_store`'s; pods run as VMs on the simulated nodes
through `simulator.kubelet.SimKubelet`. An eviction of a pod named in `protected_pods`
("namespace/name") is refused with 429, as a PodDisruptionBudget would refuse it.

    server = KubeApiServer.for_fleet(fleet, insecure=True).start()   # port 0: any free port
    cluster = KubernetesCluster(url_api_client(server.url))
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from hardware import kube_constants as kc
from simulator.cluster import NodeAccess, sim_admin_nodes
from simulator.kube_store import (
    HISTORY,
    NAMESPACES,
    NETWORK_POLICIES,
    NODES,
    PODS,
    RESOURCES,
    ApiError,
    ObjectStore,
    Resource,
    bad_request,
    fields_match,
    labels_match,
    not_found,
    status_object,
)
from simulator.kubelet import SimKubelet

log = logging.getLogger(__name__)

DEFAULT_PORT = 7690
KUBECONFIG_CONTEXT = "gpu-console-sim"
MAX_WATCH_SECONDS = 1800
WATCH_WAKE_SECONDS = 0.25  # how often an idle watch checks whether the server is stopping
MERGE_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."
VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0-gpuconsole-sim", "gitCommit": "simulated",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none",
           "compiler": "none", "platform": "linux/amd64"}


def node_object(name: str) -> dict[str, Any]:
    """A Ready node as a kubelet registers it."""
    return {"metadata": {"name": name, "labels": {kc.HOSTNAME_LABEL: name, "kubernetes.io/os": "linux"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}


def kubeconfig(url: str) -> str:
    """A kubeconfig that points Kubernetes clients at `url` (no credentials: loopback only)."""
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": KUBECONFIG_CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": KUBECONFIG_CONTEXT, "user": {}}],
        "contexts": [{"name": KUBECONFIG_CONTEXT, "context": {"cluster": KUBECONFIG_CONTEXT,
                                                              "user": KUBECONFIG_CONTEXT}}],
        "current-context": KUBECONFIG_CONTEXT,
    }, sort_keys=False)


class KubeApiServer:
    """The simulated cluster's API server; `start()` it, point clients at `url`, `stop()` it."""

    def __init__(self, nodes: NodeAccess, *, node_names: Iterable[str], host: str = "127.0.0.1", port: int = 0,
                 sync_interval: float = 0.5, history: int = HISTORY,
                 module_of: Callable[[str, int], int] = lambda node, index: index,
                 guest_ram_gib: int = 64, workload_seconds: float = 0.0):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the simulated API server listens on loopback only, not {host!r}")
        self.store = ObjectStore(history=history)
        self.kubelet = SimKubelet(self.store, nodes, module_of=module_of, guest_ram_gib=guest_ram_gib,
                                  workload_seconds=workload_seconds)
        self.protected_pods: set[str] = set()
        self.requests_served = 0
        for name in node_names:
            self.store.put(NODES, node_object(name))
        self._sync_interval = sync_interval
        self._stopping = threading.Event()
        self._http = _LoopbackServer((host, port), _handler_for(self))
        self._threads: list[threading.Thread] = []

    @classmethod
    def for_fleet(cls, fleet: Any, *, insecure: bool = True, client_options: Mapping[str, Any] | None = None,
                  **options: Any) -> KubeApiServer:
        """The API server of a `simulator.fleet.SimFleet`: one node per server, VMs over SimAdmin gRPC.

        Pass `client_options={"credentials": identity}` (and `insecure=False`) for mTLS agents."""
        nodes = sim_admin_nodes(fleet.endpoints, insecure=insecure, **(client_options or {}))
        return cls(nodes, node_names=list(fleet.endpoints), **options)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{'[::1]' if ':' in host else host}:{port}"

    def kubeconfig(self) -> str:
        return kubeconfig(self.url)

    def write_kubeconfig(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.kubeconfig())
        return path

    def start(self) -> KubeApiServer:
        self._threads = [
            threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                             name="sim-kube-api", daemon=True),
            threading.Thread(target=self._sync_loop, name="sim-kubelet", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: end watches, close connections, join every thread this server started."""
        self._stopping.set()
        with self.store.changed:
            self.store.changed.notify_all()
        if self._threads:
            self._http.shutdown()
        self._http.close_connections()
        self._http.server_close()  # joins the request threads
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sync_loop(self) -> None:
        while not self._stopping.wait(self._sync_interval):
            try:
                self.kubelet.sync()
            except Exception:  # the loop must outlive one bad sync
                log.exception("simulated kubelet sync failed")

    # -- requests ----------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, body: Any, content_type: str) -> tuple[int, Any]:
        """(HTTP status, JSON body) for one request; status 0 means "stream this watch"."""
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self.store.changed:
            self.requests_served += 1
        parts = [p for p in split.path.split("/") if p]
        try:
            if method == "GET" and (answer := _discovery(parts)) is not None:
                return 200, answer
            resource, namespace, name, sub = _route(parts)
            if method == "GET" and name is None:
                if query.get("watch") in ("true", "1"):
                    return 0, (resource, namespace, query)
                if resource is PODS:
                    self.kubelet.sync()
                return 200, self.store.list(resource, namespace, label_selector=query.get("labelSelector", ""),
                                            field_selector=query.get("fieldSelector", ""))
            if name is None:
                if method != "POST" or (resource.namespaced and namespace is None):
                    raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {split.path}")
                return 201, self._create(resource, namespace or "", body)
            return self._on_object(method, resource, namespace or "", name, sub, body, content_type)
        except ApiError as exc:
            return exc.code, exc.status()
        except Exception as exc:  # a bug here must not look like a dropped connection to the client
            log.exception("simulated API server: %s %s failed", method, split.path)
            return 500, status_object(500, "InternalError", f"internal error: {exc}")

    def _create(self, resource: Resource, namespace: str, body: Any) -> dict[str, Any]:
        created = self.store.create(resource, namespace, body)
        if resource is PODS:  # schedule and start it now: the VM exists once the create returns
            name = created["metadata"]["name"]
            self.kubelet.sync([(namespace, name)])
            return self.store.find(PODS, namespace, name) or created
        return created

    def _on_object(self, method: str, resource: Resource, namespace: str, name: str, sub: str | None,
                   body: Any, content_type: str) -> tuple[int, Any]:
        if method == "GET" and sub in (None, "status"):
            if resource is PODS:
                self.kubelet.sync([(namespace, name)])
            return 200, self.store.get(resource, namespace, name)
        if method == "PATCH":
            if not content_type.startswith(MERGE_PATCHES):
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format: {content_type or 'none'}; "
                               f"accepted: {', '.join(MERGE_PATCHES)}")
            patched = self.store.patch(resource, namespace, name, body, subresource=sub)
            if resource is NODES:
                self.kubelet.sync()  # pods waiting for an uncordoned node start now
            return 200, patched
        if method == "POST" and resource is PODS and sub == "eviction":
            return self._evict(namespace, name, body)
        if method == "DELETE" and sub is None:
            return 200, self._delete(resource, namespace, name)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    def _delete(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        if resource is PODS:
            self.kubelet.sync([(namespace, name)])  # what the kubelet saw last, into the DELETED event
            deleted = self.store.delete(PODS, namespace, name)
            self.kubelet.stop(deleted)
            return deleted
        if resource is NAMESPACES:
            self.store.get(NAMESPACES, "", name)
            for inner in (PODS, NETWORK_POLICIES):
                for obj in self.store.items(inner, name):
                    with contextlib.suppress(ApiError):
                        self._delete(inner, name, obj["metadata"]["name"])
        return self.store.delete(resource, namespace, name)

    def _evict(self, namespace: str, name: str, body: Any) -> tuple[int, Any]:
        if body is not None and (not isinstance(body, dict) or body.get("kind", "Eviction") != "Eviction"):
            raise bad_request("the body of an eviction must be a policy/v1 Eviction")
        self.store.get(PODS, namespace, name)
        if f"{namespace}/{name}" in self.protected_pods:
            error = ApiError(429, "TooManyRequests", PDB_MESSAGE, name=name, resource=PODS)
            return 429, {**error.status(), "details": {"name": name, "kind": "pods", "causes": [
                {"reason": "DisruptionBudget", "message": "The disruption budget needs 1 healthy pod"}]}}
        self._delete(PODS, namespace, name)
        return 201, status_object(201, "", "", success=True)

    # -- watches -----------------------------------------------------------------------------
    def watch(self, resource: Resource, namespace: str | None, query: dict[str, str],
              write: Callable[[dict[str, Any]], None]) -> None:
        """Stream events after `resourceVersion` (or the current objects, then events) until the timeout."""
        labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
        timeout = min(float(query.get("timeoutSeconds") or MAX_WATCH_SECONDS), MAX_WATCH_SECONDS)
        deadline = time.monotonic() + timeout
        rv = query.get("resourceVersion") or "0"

        def wanted(obj: dict[str, Any]) -> bool:
            return labels_match(obj["metadata"].get("labels") or {}, labels) and fields_match(obj, fields)

        if rv == "0":  # "any version": the current objects first, as ADDED
            listing = self.store.list(resource, namespace)
            for obj in listing["items"]:
                if wanted(obj):
                    write({"type": "ADDED", "object": obj})
            since = int(listing["metadata"]["resourceVersion"])
        elif not rv.isdigit():
            write({"type": "ERROR", "object": bad_request(f"invalid resourceVersion {rv!r}").status()})
            return
        else:
            since = int(rv)
        seen = since
        while not self._stopping.is_set() and (remaining := deadline - time.monotonic()) > 0:
            with self.store.changed:
                try:
                    events, seen = self.store.events_since(since)
                except ApiError as exc:
                    write({"type": "ERROR", "object": exc.status()})
                    return
                if not events:
                    self.store.changed.wait(timeout=min(WATCH_WAKE_SECONDS, remaining))
                    continue
            for event in events:
                since = event.rv
                if event.resource is resource and namespace in (None, event.namespace) and wanted(event.obj):
                    write({"type": event.type, "object": event.obj})
            since = max(since, seen)
        if query.get("allowWatchBookmarks") in ("true", "1") and not self._stopping.is_set():
            write({"type": "BOOKMARK", "object": {"kind": resource.kind, "apiVersion": resource.api_version,
                                                  "metadata": {"resourceVersion": str(since)}}})


def _route(parts: list[str]) -> tuple[Resource, str | None, str | None, str | None]:
    """(resource, namespace, name, subresource) of an API path; 404 for anything not served."""
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise _no_such_path()
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in RESOURCES:
        namespace, rest = rest[1], rest[2:]
    resource = RESOURCES.get((group, version, rest[0])) if rest else None
    if resource is None or len(rest) > 3 or (namespace is not None and not resource.namespaced):
        raise _no_such_path()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in ("status", "eviction"):
        raise not_found(resource, f"{name}/{sub}")
    return resource, namespace, name, sub


def _no_such_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


def _discovery(parts: list[str]) -> dict[str, Any] | None:
    """Version, health and discovery documents; None for any other path."""
    groups: dict[str, set[str]] = {}
    for group, version, _ in RESOURCES:
        groups.setdefault(group, set()).add(version)
    if parts == ["version"]:
        return VERSION
    if parts in (["healthz"], ["readyz"], ["livez"]):
        return {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200, "message": "ok"}
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": sorted(groups[""]), "serverAddressByClientCIDRs": []}
    if parts == ["apis"]:
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in sorted(vs)],
             "preferredVersion": {"groupVersion": f"{g}/{max(vs)}", "version": max(vs)}}
            for g, vs in sorted(groups.items()) if g]}
    if (len(parts) == 2 and parts[0] == "api") or (len(parts) == 3 and parts[0] == "apis"):
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        served = [r for r in RESOURCES.values() if (r.group, r.version) == (group, version)]
        if not served:
            return None
        resources = []
        for r in served:
            verbs = ["create", "delete", "get", "list", "patch", "watch"]
            resources.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                              "kind": r.kind, "verbs": verbs})
            if r.status_subresource:
                resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                                  "kind": r.kind, "verbs": ["get", "patch"]})
        if (group, version) == ("", "v1"):
            resources.append({"name": "pods/eviction", "singularName": "", "namespaced": True,
                              "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}
    return None


class _LoopbackServer(ThreadingHTTPServer):
    """Threads per connection, joined on close; skips HTTPServer's slow reverse DNS lookup of the bind
    address; remembers open connections so that `close_connections` can end idle keep-alives."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _handler_for(api: KubeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 300  # an idle keep-alive connection is closed after this

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, payload = 400, bad_request("the request body is not JSON").status()
            else:
                status, payload = api.handle(method, self.path, body, self.headers.get("Content-Type", ""))
            if status == 0:
                self._stream(*payload)
                return
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> None:
            """A watch, chunked like the real API server's: one JSON event per chunk."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def write(event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            try:
                api.watch(resource, namespace, query, write)
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                self.close_connection = True  # the client went away

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler
