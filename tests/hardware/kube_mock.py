"""A small Kubernetes API server for tests: real HTTP on loopback, in a background thread.

It stores any resource by URL shape (core `/api/v1/...` and `/apis/<group>/<version>/...`,
cluster-scoped or namespaced, with `status` subresources), assigns uid and resourceVersion,
answers 201 on create and 409 AlreadyExists / Conflict like the real server, applies JSON merge
patches (and refuses a dict sent as json-patch, as the real server would), honours label and
field selectors, binds a pod to the node its hostname affinity names (the scheduler), serves
watches as a stream of JSON lines from a resource version (410 Gone when the version is older
than `compacted`), evicts pods (429 when `pdb_blocks` names the pod),
keeps objects with finalizers until the finalizers are gone, and records every request.

Tests script faults with `fail(method, path_regex, status, times)`.

Why not kmock 0.8: it answers 500 on Namespace paths, 200 where the client expects 201, ignores
selectors and watch timeouts, and sets no uid/resourceVersion. Every test here needs those.
"""

from __future__ import annotations

import copy
import json
import re
import socketserver
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

from simulator.kube_store import merge_patch  # the same RFC 7386 rule as the simulated API server


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    times: int
    message: str = "injected"
    delay: float = 0.0


@dataclass
class Event:
    rv: int
    kind: str
    collection: tuple
    obj: dict


KINDS = {"namespaces": "Namespace", "pods": "Pod", "nodes": "Node", "tenancies": "Tenancy",
         "gpuleases": "GpuLease", "ciliumnetworkpolicies": "CiliumNetworkPolicy"}


def _labels_match(labels: dict, selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(obj: dict, selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        path, value = term.split("=", 1)
        node: Any = obj
        for part in path.split("."):
            node = node.get(part, "") if isinstance(node, dict) else ""
        if str(node or "") != value:
            return False
    return True


class KubeMock:
    """The server's state and behaviour; `url` is where the client should point."""

    def __init__(self) -> None:
        self.objects: dict[tuple, dict] = {}  # (group, version, resource, namespace, name) -> object
        self.events: list[Event] = []
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.pdb_blocks: set[str] = set()
        self.compacted = 0  # watches from a resourceVersion below this get 410 Gone
        self.watch_max_events: int | None = None  # close a watch after this many events (a dropped watch)
        self.watch_abort = False  # ...and close it mid-stream, without the final chunk
        self.rv = 100
        self.lock = threading.Condition()
        self.server = _LoopbackServer(("127.0.0.1", 0), _handler_for(self))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> KubeMock:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.url
        configuration.retries = 0
        return client.ApiClient(configuration)

    # -- scripting ---------------------------------------------------------------------------
    def fail(self, method: str, path: str, status: int, times: int = 1, message: str = "injected",
             delay: float = 0.0) -> None:
        """Answer the next `times` matching requests with `status` (after `delay` seconds)."""
        self.faults.append(Fault(method.upper(), re.compile(path), status, times, message, delay))

    def put(self, path: str, obj: dict) -> dict:
        """Store an object at a collection path, e.g. `/api/v1/nodes` (bypasses requests and faults)."""
        key = self._key(path, obj["metadata"]["name"])
        with self.lock:
            return self._store(key, copy.deepcopy(obj), "ADDED")

    def get(self, path: str) -> dict | None:
        collection, name, _ = self._parse(path)
        return copy.deepcopy(self.objects.get((*collection, name)))

    def sent(self, method: str, path_regex: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(path_regex, r.path)]

    def set_pod_phase(self, namespace: str, name: str, phase: str, exit_code: int | None = None) -> None:
        key = ("", "v1", "pods", namespace, name)
        with self.lock:
            obj = copy.deepcopy(self.objects[key])
            status: dict[str, Any] = {"phase": phase}
            if exit_code is not None:
                container = obj["spec"]["containers"][0]
                status["containerStatuses"] = [{
                    "name": container["name"], "image": container["image"],
                    "imageID": "", "ready": False, "restartCount": 0, "state": {"terminated": {
                        "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}}}]
            obj["status"] = status
            self._store(key, obj, "MODIFIED")

    # -- storage -----------------------------------------------------------------------------
    @staticmethod
    def _parse(path: str) -> tuple[tuple, str | None, str | None]:
        parts = [p for p in path.split("/") if p]
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return (group, version, rest[0], namespace), name, sub

    def _key(self, path: str, name: str) -> tuple:
        collection, _, _ = self._parse(path)
        return (*collection, name)

    def _store(self, key: tuple, obj: dict, kind: str) -> dict:
        group, version, resource, namespace, name = key
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        meta["name"] = name
        if namespace:
            meta["namespace"] = namespace
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(self.rv)
        obj.setdefault("apiVersion", f"{group}/{version}" if group else version)
        obj.setdefault("kind", KINDS.get(resource, resource))
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.events.append(Event(self.rv, kind, key[:4], copy.deepcopy(obj)))
        self.lock.notify_all()
        return copy.deepcopy(obj)

    # -- request handling --------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, body: Any, content_type: str) -> tuple[int, Any]:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        with self.lock:
            self.requests.append(Recorded(method, split.path, query, body, content_type))
            fault = next((f for f in self.faults
                          if f.method == method and f.times > 0 and f.path.search(split.path)), None)
            if fault is not None:
                fault.times -= 1
        if fault is not None:
            time.sleep(fault.delay)
            return fault.status, _status(fault.status, fault.message)
        collection, name, sub = self._parse(split.path)
        with self.lock:
            if method == "GET" and name is None:
                if query.get("watch") in ("true", "1"):
                    return 0, (collection, query)
                return 200, self._list(collection, query)
            key = (*collection, name)
            if method == "POST" and sub == "eviction":
                return self._evict(key)
            if method == "POST":
                return self._create(collection, body)
            current = self.objects.get(key)
            if current is None:
                return 404, _status(404, f"{collection[2]} {name!r} not found", "NotFound")
            if method == "GET":
                return 200, copy.deepcopy(current)
            if method == "PATCH":
                return self._patch(key, current, body, content_type, sub)
            if method == "PUT":
                return self._patch(key, current, body, "application/merge-patch+json", sub, replace=True)
            if method == "DELETE":
                return self._delete(key, current)
        return 405, _status(405, "method not allowed")

    def _list(self, collection: tuple, query: dict) -> dict:
        group, version, resource, namespace = collection
        ordered = sorted(self.objects.items(), key=lambda kv: kv[1]["metadata"]["name"])
        items = [copy.deepcopy(o) for k, o in ordered
                 if k[:3] == collection[:3] and (namespace is None or k[3] == namespace)
                 and _labels_match(o["metadata"].get("labels") or {}, query.get("labelSelector", ""))
                 and _fields_match(o, query.get("fieldSelector", ""))]
        return {"apiVersion": f"{group}/{version}" if group else version,
                "kind": f"{KINDS.get(resource, resource)}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    def _create(self, collection: tuple, body: dict) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        key = (*collection, name)
        if key in self.objects:
            return 409, _status(409, f"{collection[2]} {name!r} already exists", "AlreadyExists")
        obj = copy.deepcopy(body)
        if collection[2] == "pods":
            _schedule(obj)
        return 201, self._store(key, obj, "ADDED")

    def _patch(self, key: tuple, current: dict, body: Any, content_type: str, sub: str | None,
               replace: bool = False) -> tuple[int, dict]:
        if "json-patch" in content_type and not isinstance(body, list):
            return 400, _status(400, "json-patch body must be a list", "BadRequest")
        want_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if want_rv and want_rv != current["metadata"]["resourceVersion"]:
            return 409, _status(409, "the object has been modified; please apply your changes to the latest "
                                     "version and try again", "Conflict")
        if sub == "status":
            updated = copy.deepcopy(current)
            updated["status"] = merge_patch(current.get("status"), body.get("status")) if not replace \
                else body.get("status")
        else:
            patch = {k: v for k, v in body.items() if k != "status"}
            updated = body if replace else merge_patch(current, patch)
            updated = copy.deepcopy(updated)
            updated["metadata"] = {**updated.get("metadata", {}),
                                   **{k: current["metadata"][k] for k in ("uid", "creationTimestamp")}}
            if current["metadata"].get("deletionTimestamp"):
                updated["metadata"]["deletionTimestamp"] = current["metadata"]["deletionTimestamp"]
        if updated["metadata"].get("deletionTimestamp") and not updated["metadata"].get("finalizers"):
            return 200, self._store(key, updated, "DELETED")
        return 200, self._store(key, updated, "MODIFIED")

    def _delete(self, key: tuple, current: dict) -> tuple[int, dict]:
        if current["metadata"].get("finalizers"):
            updated = copy.deepcopy(current)
            updated["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:01Z")
            return 200, self._store(key, updated, "MODIFIED")
        self._store(key, copy.deepcopy(current), "DELETED")
        return 200, _status(200, "deleted", "", success=True)

    def _evict(self, key: tuple) -> tuple[int, dict]:
        if key not in self.objects:
            return 404, _status(404, "pod not found", "NotFound")
        if key[4] in self.pdb_blocks:
            return 429, _status(429, "Cannot evict pod as it would violate the pod's disruption budget.",
                                "TooManyRequests")
        self._store(key, copy.deepcopy(self.objects[key]), "DELETED")
        return 201, _status(201, "evicted", "", success=True)

    def watch(self, collection: tuple, query: dict, write) -> None:
        """Stream events after `resourceVersion` until `timeoutSeconds` or `watch_max_events`."""
        since = int(query.get("resourceVersion") or self.rv)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 5)
        sent = 0
        with self.lock:
            if since < self.compacted:
                write({"type": "ERROR", "object": _status(410, "too old resource version", "Expired")})
                return
        while time.monotonic() < deadline:
            with self.lock:
                pending = [e for e in self.events if e.rv > since and e.collection[:3] == collection[:3]
                           and (collection[3] is None or e.collection[3] == collection[3])]
                if not pending:
                    self.lock.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                    continue
            for event in pending:
                since = event.rv
                labels = event.obj["metadata"].get("labels") or {}
                if not _labels_match(labels, query.get("labelSelector", "")):
                    continue
                write({"type": event.kind, "object": event.obj})
                sent += 1
                if self.watch_max_events is not None and sent >= self.watch_max_events:
                    return


class _LoopbackServer(ThreadingHTTPServer):
    """Skips HTTPServer's reverse DNS lookup of the bind address, which can take seconds."""

    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


def _schedule(pod: dict) -> None:
    """Bind a pod to the node its required hostname affinity names, as the scheduler would."""
    spec = pod.setdefault("spec", {})
    affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    for term in (affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms", []):
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == "kubernetes.io/hostname" and expr.get("values") and not spec.get("nodeName"):
                spec["nodeName"] = expr["values"][0]


def _status(code: int, message: str, reason: str = "", success: bool = False) -> dict:
    return {"apiVersion": "v1", "kind": "Status", "status": "Success" if success else "Failure",
            "message": message, "reason": reason, "code": code}


def _handler_for(mock: KubeMock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, payload = mock.handle(method, self.path, body, self.headers.get("Content-Type", ""))
            if status == 0:
                self._stream(*payload)
                return
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, collection: tuple, query: dict) -> None:
            """A watch, chunked like the real API server's: one JSON event per chunk."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def write(event: dict) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            try:
                mock.watch(collection, query, write)
                if mock.watch_abort:
                    self.close_connection = True  # the connection drops: no final chunk
                    return
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
