"""The simulated Kubernetes API server's object store: what etcd and the API machinery do for it.

Objects are kept as the API serves them (camelCase JSON dicts) under (resource, namespace, name).
Every write bumps one cluster-wide resourceVersion and appends a watch event; the last `history`
events are kept, and a watch from an older version is told 410 Gone, as etcd compaction would.
The machinery follows the real server where the console depends on it: creates answer 409
AlreadyExists, a merge patch carrying `metadata.resourceVersion` is refused with 409 Conflict
when the object moved on, status subresources (`.../status`) change only `status` and the main
resource never does, a delete of an object with finalizers only sets `deletionTimestamp` and the
object goes when the last finalizer is removed (no new finalizer may be added meanwhile), and a
namespaced object needs its namespace. Errors are `ApiError`s that render as `Status` objects.
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hardware import kube_constants as kc

HISTORY = 10_000
FIRST_RESOURCE_VERSION = 1000
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
CONFLICT_MESSAGE = "the object has been modified; please apply your changes to the latest version and try again"


@dataclass(frozen=True)
class Resource:
    """One served resource type."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the real server names the resource in messages: `pods`, `gpuleases.gpuconsole.dev`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False, status_subresource=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
NETWORK_POLICIES = Resource(kc.CILIUM_GROUP, kc.CILIUM_VERSION, kc.CILIUM_POLICY_PLURAL, "CiliumNetworkPolicy",
                            namespaced=True, status_subresource=False)
TENANCIES = Resource(kc.API_GROUP, kc.API_VERSION, kc.TENANCY_PLURAL, kc.TENANCY_KIND, namespaced=False)
GPULEASES = Resource(kc.API_GROUP, kc.API_VERSION, kc.GPULEASE_PLURAL, kc.GPULEASE_KIND, namespaced=False)
RESOURCES = {(r.group, r.version, r.plural): r
             for r in (NAMESPACES, NODES, PODS, NETWORK_POLICIES, TENANCIES, GPULEASES)}


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, reason: str, message: str, *, name: str = "", resource: Resource | None = None,
                  success: bool = False) -> dict[str, Any]:
    """A `Status` object, the body Kubernetes sends with every error (and some deletes)."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Success" if success else "Failure", "message": message,
                            "reason": reason, "code": code}
    if name or resource is not None:
        details: dict[str, Any] = {"name": name} if name else {}
        if resource is not None:
            details.update({"group": resource.group, "kind": resource.plural} if resource.group
                           else {"kind": resource.plural})
        body["details"] = details
    return body


class ApiError(Exception):
    """A refusal the server answers with `code` and a Status object."""

    def __init__(self, code: int, reason: str, message: str, *, name: str = "",
                 resource: Resource | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.name, self.resource = name, resource

    def status(self) -> dict[str, Any]:
        return status_object(self.code, self.reason, self.message, name=self.name, resource=self.resource)


def not_found(resource: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource.qualified} "{name}" not found', name=name, resource=resource)


def gone(message: str = "too old resource version") -> ApiError:
    return ApiError(410, "Expired", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(resource: Resource, name: str, why: str) -> ApiError:
    return ApiError(422, "Invalid", f'{resource.kind} "{name}" is invalid: {why}', name=name, resource=resource)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_SELECTOR_TERMS = re.compile(r"(?:[^,(]|\([^)]*\))+")
_SET_TERM = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def labels_match(labels: dict[str, str], selector: str) -> bool:
    """Equality- and set-based label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`."""
    for term in (t.strip() for t in _SELECTOR_TERMS.findall(selector or "")):
        if not term:
            continue
        if match := _SET_TERM.match(term):
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def fields_match(obj: dict[str, Any], selector: str) -> bool:
    """Field selectors such as `spec.nodeName=n1`, `metadata.name!=x`, `status.phase=Running`."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        negate = "!=" in term
        path, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        node: Any = obj
        for part in path.strip().split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (str(node or "") == value.strip()) == negate:
            return False
    return True


@dataclass(frozen=True)
class Event:
    """One watch event: ADDED, MODIFIED or DELETED, with the object as it was then."""

    rv: int
    type: str
    resource: Resource
    namespace: str
    obj: dict[str, Any]


Key = tuple[Resource, str, str]  # (resource, namespace or "", name)


class ObjectStore:
    """Every object of the simulated cluster; thread-safe. `changed` is notified on each write."""

    def __init__(self, *, history: int = HISTORY):
        self.changed = threading.Condition(threading.RLock())
        self._objects: dict[Key, dict[str, Any]] = {}
        self._events: deque[Event] = deque(maxlen=history)
        self._rv = FIRST_RESOURCE_VERSION
        self._compacted = FIRST_RESOURCE_VERSION  # events up to this version are no longer kept

    @property
    def resource_version(self) -> int:
        with self.changed:
            return self._rv

    # -- reads -------------------------------------------------------------------------------
    def find(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        with self.changed:
            obj = self._objects.get((resource, namespace if resource.namespaced else "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        obj = self.find(resource, namespace, name)
        if obj is None:
            raise not_found(resource, name)
        return obj

    def items(self, resource: Resource, namespace: str | None = None, *, label_selector: str = "",
              field_selector: str = "") -> list[dict[str, Any]]:
        with self.changed:
            found = [copy.deepcopy(obj) for (res, ns, _), obj in self._objects.items()
                     if res == resource and (namespace is None or ns == namespace)
                     and labels_match(obj["metadata"].get("labels") or {}, label_selector)
                     and fields_match(obj, field_selector)]
        return sorted(found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def list(self, resource: Resource, namespace: str | None = None, *, label_selector: str = "",
             field_selector: str = "") -> dict[str, Any]:
        """A `<Kind>List` with the store's resource version (a watch from it misses nothing)."""
        with self.changed:
            items = self.items(resource, namespace, label_selector=label_selector, field_selector=field_selector)
            rv = self._rv
        return {"kind": f"{resource.kind}List", "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    def events_since(self, since: int) -> tuple[list[Event], int]:
        """(events after version `since`, the version they reach); 410 Gone when some are no longer kept."""
        with self.changed:
            if since < self._compacted:
                raise gone(f"too old resource version: {since} ({self._compacted})")
            return [e for e in self._events if e.rv > since], self._rv

    # -- writes ------------------------------------------------------------------------------
    def create(self, resource: Resource, namespace: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(f"the body of a {resource.kind} must be a JSON object")
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        name = meta.get("name") or ""
        if body.get("kind", resource.kind) != resource.kind or \
                body.get("apiVersion", resource.api_version) != resource.api_version:
            raise bad_request(f"the object is a {body.get('apiVersion')}/{body.get('kind')}, "
                              f"not a {resource.api_version}/{resource.kind}")
        if resource.namespaced and meta.get("namespace", namespace) != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        pattern = DNS1123_LABEL if resource in (NAMESPACES,) else DNS1123_SUBDOMAIN
        if not name:
            raise invalid(resource, name, "metadata.name: Required value: name or generateName is required")
        if len(name) > 253 or not pattern.match(name):
            raise invalid(resource, name, f"metadata.name: Invalid value: {name!r}: not a DNS-1123 name")
        with self.changed:
            if resource.namespaced and (NAMESPACES, "", namespace) not in self._objects:
                raise not_found(NAMESPACES, namespace)
            key = (resource, namespace if resource.namespaced else "", name)
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{resource.qualified} "{name}" already exists',
                               name=name, resource=resource)
            obj = copy.deepcopy(body)
            obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
            meta = obj.setdefault("metadata", {})
            for server_set in ("deletionTimestamp", "resourceVersion", "uid", "creationTimestamp"):
                meta.pop(server_set, None)
            if resource.namespaced:
                meta["namespace"] = namespace
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            if resource is PODS:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            elif resource is NAMESPACES:
                obj["status"] = {"phase": "Active"}
            elif resource.status_subresource:
                obj.pop("status", None)
            return self._write(key, obj, "ADDED")

    def patch(self, resource: Resource, namespace: str, name: str, patch: Any, *,
              subresource: str | None = None) -> dict[str, Any]:
        """Apply a JSON merge patch to the object or (`subresource="status"`) to its status."""
        if not isinstance(patch, dict):
            raise bad_request("a merge patch must be a JSON object")
        if subresource not in (None, "status") or (subresource == "status" and not resource.status_subresource):
            raise not_found(resource, f"{name}/{subresource}")
        with self.changed:
            key = (resource, namespace if resource.namespaced else "", name)
            current = self._objects.get(key)
            if current is None:
                raise not_found(resource, name)
            want_rv = (patch.get("metadata") or {}).get("resourceVersion")
            if want_rv and str(want_rv) != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource.qualified} "{name}": '
                                                f"{CONFLICT_MESSAGE}", name=name, resource=resource)
            if subresource == "status":
                updated = copy.deepcopy(current)
                updated["status"] = merge_patch(current.get("status"), patch.get("status"))
            else:
                body = {k: v for k, v in patch.items()
                        if k not in ("apiVersion", "kind") and not (k == "status" and resource.status_subresource)}
                updated = merge_patch(current, body)
                meta = updated.setdefault("metadata", {})
                for fixed in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
                    if fixed in current["metadata"]:
                        meta[fixed] = current["metadata"][fixed]
                    else:
                        meta.pop(fixed, None)
                if "spec" in body and updated.get("spec") != current.get("spec"):
                    meta["generation"] = current["metadata"].get("generation", 1) + 1
            meta = updated["metadata"]
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            if meta.get("deletionTimestamp") and set(meta.get("finalizers") or ()) - set(
                    current["metadata"].get("finalizers") or ()):
                raise invalid(resource, name, "metadata.finalizers: Forbidden: no new finalizers can be added "
                                              "if the object is being deleted")
            if updated == current:
                return copy.deepcopy(current)  # nothing changed: no new version, no event
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                return self._write(key, updated, "DELETED")
            return self._write(key, updated, "MODIFIED")

    def delete(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        """Delete now, or (finalizers present) mark the object as being deleted."""
        with self.changed:
            key = (resource, namespace if resource.namespaced else "", name)
            current = self._objects.get(key)
            if current is None:
                raise not_found(resource, name)
            updated = copy.deepcopy(current)
            if current["metadata"].get("finalizers"):
                if current["metadata"].get("deletionTimestamp"):
                    return updated
                updated["metadata"]["deletionTimestamp"] = now_rfc3339()
                return self._write(key, updated, "MODIFIED")
            updated["metadata"].setdefault("deletionTimestamp", now_rfc3339())
            return self._write(key, updated, "DELETED")

    def set_status(self, resource: Resource, namespace: str, name: str, *, uid: str, status: dict[str, Any],
                   spec: dict[str, Any] | None = None) -> bool:
        """What a controller (the kubelet, the scheduler) writes: the status, and spec fields it owns.

        Applies only to the object with this `uid` (not to a same-named successor); False if gone."""
        with self.changed:
            key = (resource, namespace if resource.namespaced else "", name)
            current = self._objects.get(key)
            if current is None or current["metadata"].get("uid") != uid:
                return False
            updated = copy.deepcopy(current)
            updated["status"] = copy.deepcopy(status)
            if spec:
                updated["spec"] = {**updated.get("spec", {}), **copy.deepcopy(spec)}
            if updated != current:
                self._write(key, updated, "MODIFIED")
            return True

    def put(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace as the system itself would (nodes registering), without the API's checks."""
        with self.changed:
            meta = obj.setdefault("metadata", {})
            key = (resource, meta.get("namespace", "") if resource.namespaced else "", meta["name"])
            existing = self._objects.get(key)
            obj = copy.deepcopy(obj)
            obj["apiVersion"], obj["kind"] = resource.api_version, resource.kind
            obj["metadata"].update(uid=existing["metadata"]["uid"] if existing else str(uuid.uuid4()),
                                   creationTimestamp=now_rfc3339(), generation=1)
            return self._write(key, obj, "MODIFIED" if existing else "ADDED")

    def _write(self, key: Key, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        resource, namespace, _ = key
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        if len(self._events) == self._events.maxlen:
            self._compacted = self._events[0].rv
        self._events.append(Event(self._rv, kind, resource, namespace, copy.deepcopy(obj)))
        self.changed.notify_all()
        return copy.deepcopy(obj)

