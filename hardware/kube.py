"""`KubernetesCluster`: the `hardware.cluster.Cluster` seam over the official `kubernetes` client.

Conventions:
- every argument is validated before the first request (`hardware.cluster.validate_*`);
- creates are idempotent: 409 AlreadyExists means read what is there and adopt it;
- writes that must not lose a race carry `metadata.resourceVersion`; a 409 Conflict re-reads and
  retries, and `ClusterConflict` is raised only when retries run out;
- 5xx, timeouts and connection errors raise `ClusterUnavailable` (retryable); other refusals
  raise `ClusterError`;
- patches are JSON merge patches (the client's default content type would be json-patch).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from hardware import kube_constants as kc
from hardware.cluster import (
    DrainReport,
    EvictionRefusal,
    GpuLeaseStatus,
    PodPhase,
    PodStatus,
    TenancyStatus,
    validate_lease_id,
    validate_node,
    validate_pod_request,
    validate_tenant,
)
from hardware.exceptions import ClusterConflict, ClusterError, ClusterUnavailable, FailedPrecondition

MERGE_PATCH = "application/merge-patch+json"
_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient from the given kubeconfig, else the in-cluster service account, else ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    return client.ApiClient(configuration)


def url_api_client(url: str, *, retries: int = 0) -> client.ApiClient:
    """An ApiClient for an API server at `url` that takes no credentials (the simulated cluster on
    loopback). No transport retries by default: a failure surfaces as `ClusterUnavailable` at once and
    the caller's retry policy decides."""
    configuration = client.Configuration()
    configuration.host = url.rstrip("/")
    configuration.retries = retries
    return client.ApiClient(configuration)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status_message(exc: ApiException) -> str:
    """The `message` of the Status object Kubernetes sends with an error, else the HTTP reason."""
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def _translate(exc: Exception, what: str) -> ClusterError:
    if isinstance(exc, ApiException):
        status = exc.status or 0
        if status == 0 or status >= 500 or status == 429:
            return ClusterUnavailable(f"{what}: Kubernetes answered {status}: {_status_message(exc)}")
        if status == 409:
            return ClusterConflict(f"{what}: {_status_message(exc)}")
        return ClusterError(f"{what}: Kubernetes refused ({status}): {_status_message(exc)}")
    return ClusterUnavailable(f"{what}: cannot reach Kubernetes: {exc}")


def namespace_body(tenant: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": kc.tenant_namespace(tenant),
            "labels": {kc.MANAGED_BY_LABEL: kc.MANAGED_BY, kc.TENANT_LABEL: tenant},
        },
    }


def network_policy_body(tenant: str) -> dict[str, Any]:
    """Seed 001's policy: pods talk only to pods of their own namespace, both ways."""
    namespace = kc.tenant_namespace(tenant)
    peers = [{"matchLabels": {kc.CILIUM_NAMESPACE_LABEL: namespace}}]
    return {
        "apiVersion": f"{kc.CILIUM_GROUP}/{kc.CILIUM_VERSION}",
        "kind": "CiliumNetworkPolicy",
        "metadata": {
            "name": kc.NETWORK_POLICY_NAME,
            "namespace": namespace,
            "labels": {kc.MANAGED_BY_LABEL: kc.MANAGED_BY, kc.TENANT_LABEL: tenant},
        },
        "spec": {
            "endpointSelector": {},
            "ingress": [{"fromEndpoints": peers}],
            "egress": [{"toEndpoints": json.loads(json.dumps(peers))}],
        },
    }


def tenancy_body(tenant: str) -> dict[str, Any]:
    return {
        "apiVersion": kc.GROUP_VERSION,
        "kind": kc.TENANCY_KIND,
        "metadata": {"name": tenant, "labels": {kc.MANAGED_BY_LABEL: kc.MANAGED_BY}},
        "spec": {"tenant": tenant},
    }


def lease_pod_body(*, lease_id: str, tenant: str, image: str, node: str, gpu_indexes: Sequence[int],
                   command: Sequence[str] = (), startup_timeout_s: int | None = None,
                   predicted_boot_s: float | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The pod of a lease: Kata runtime, exactly these GPUs, pinned to `node`, never restarted.

    `startup_timeout_s` (the console sets it from the boot prediction with a margin) becomes Kata's
    per-pod create-container timeout: one fixed value killed the seed's 8-GPU VM in a loop. The
    container's own probes are not used for it: they start only once the container runs, after the
    whole VM boot. `predicted_boot_s` is recorded as an annotation for whoever reads the pod.

    The GPUs reach the container two ways: the device plugin's Allocate answers their CDI names
    (the path kubelet takes), and the pod carries them in a `cdi.k8s.io/<plugin>_<id>` annotation,
    the CDI annotation convention containerd parses, so the request is visible on the object.
    """
    name = kc.lease_pod_name(lease_id)
    cdi_devices = ",".join(kc.cdi_device_name(i) for i in gpu_indexes)
    container: dict[str, Any] = {
        "name": kc.LEASE_CONTAINER,
        "image": image,
        "resources": {"limits": {kc.GPU_RESOURCE: str(len(gpu_indexes))}},
    }
    if command:
        container["command"] = list(command)
    if env:
        container["env"] = [{"name": key, "value": value} for key, value in sorted(env.items())]
    annotations = {
        kc.GPULEASE_ANNOTATION: name,
        kc.GPU_INDEXES_ANNOTATION: ",".join(str(i) for i in gpu_indexes),
        f"{kc.CDI_ANNOTATION_PREFIX}{kc.CDI_ANNOTATION_PLUGIN}_{name}": cdi_devices,
    }
    if startup_timeout_s is not None:
        annotations[kc.KATA_CREATE_CONTAINER_TIMEOUT_ANNOTATION] = str(int(startup_timeout_s))
    if predicted_boot_s is not None:
        annotations[kc.PREDICTED_BOOT_ANNOTATION] = str(round(predicted_boot_s))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": kc.tenant_namespace(tenant),
            "labels": {kc.MANAGED_BY_LABEL: kc.MANAGED_BY, kc.TENANT_LABEL: tenant, kc.LEASE_LABEL: lease_id},
            "annotations": annotations,
        },
        "spec": {
            "runtimeClassName": kc.RUNTIME_CLASS,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": kc.HOSTNAME_LABEL, "operator": "In", "values": [node]},
                ]}],
            }}},
            "containers": [container],
        },
    }


def gpu_lease_body(*, lease_id: str, tenant: str, node: str, gpu_module_ids: Sequence[int],
                   pci_addresses: Sequence[str], pod: str) -> dict[str, Any]:
    return {
        "apiVersion": kc.GROUP_VERSION,
        "kind": kc.GPULEASE_KIND,
        "metadata": {
            "name": kc.lease_pod_name(lease_id),
            "labels": {kc.MANAGED_BY_LABEL: kc.MANAGED_BY, kc.TENANT_LABEL: tenant, kc.LEASE_LABEL: lease_id},
            "finalizers": [kc.GPULEASE_FINALIZER],
        },
        "spec": {
            "leaseId": lease_id,
            "tenant": tenant,
            "node": node,
            "pod": pod,
            "gpuModuleIds": list(gpu_module_ids),
            "pciAddresses": list(pci_addresses),
        },
    }


def pod_status(obj: dict[str, Any], *, deleted: bool = False) -> PodStatus:
    """A PodStatus from a pod as the API serves it (camelCase JSON)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    exit_code, reason = None, status.get("reason") or ""
    for container in status.get("containerStatuses") or []:
        if container.get("name") not in (kc.LEASE_CONTAINER, None):
            continue
        state = container.get("state") or {}
        if state.get("terminated"):
            exit_code = state["terminated"].get("exitCode")
            reason = reason or state["terminated"].get("reason") or ""
        elif state.get("waiting"):
            reason = reason or state["waiting"].get("reason") or ""
    return PodStatus(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        node=spec.get("nodeName") or "",
        phase=PodPhase.DELETED if deleted else status.get("phase") or PodPhase.PENDING,
        exit_code=exit_code,
        reason=reason,
        lease_id=(meta.get("labels") or {}).get(kc.LEASE_LABEL, ""),
        resource_version=meta.get("resourceVersion") or "",
    )


def tenancy_status(obj: dict[str, Any]) -> TenancyStatus:
    status = obj.get("status") or {}
    conditions = tuple(
        (c.get("type", ""), c.get("status", ""), c.get("reason", "")) for c in status.get("conditions") or []
    )
    phase = status.get("phase") or kc.TenancyPhase.PENDING
    return TenancyStatus(name=obj["metadata"]["name"], namespace=status.get("namespace", ""),
                         phase=phase, ready=phase == kc.TenancyPhase.READY, conditions=conditions)


def gpu_lease_status(obj: dict[str, Any]) -> GpuLeaseStatus:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    return GpuLeaseStatus(
        lease_id=spec.get("leaseId", ""),
        node=spec.get("node", ""),
        tenant=spec.get("tenant", ""),
        pod=spec.get("pod", ""),
        gpu_module_ids=tuple(spec.get("gpuModuleIds") or ()),
        pci_addresses=tuple(spec.get("pciAddresses") or ()),
        phase=(obj.get("status") or {}).get("phase") or kc.GpuLeasePhase.RESERVED,
        finalized=kc.GPULEASE_FINALIZER not in (meta.get("finalizers") or []),
        deleting=bool(meta.get("deletionTimestamp")),
    )


class KubernetesCluster:
    """The cluster seam over a real API server. Give it an ApiClient, or a kubeconfig path."""

    def __init__(self, api_client: client.ApiClient | None = None, *, kubeconfig: str | None = None,
                 context: str | None = None, request_timeout: float = 10.0, conflict_retries: int = 5):
        self._api = api_client if api_client is not None else load_api_client(kubeconfig, context)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)
        self._timeout = request_timeout
        self._retries = conflict_retries

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, expect: tuple[int, ...] = (),
              stream: bool = False, **kwargs: Any) -> Any:
        """Call the client and return the answer as the server's JSON (camelCase dicts).

        ApiExceptions whose status is in `expect` pass through for the caller; every other failure
        is translated. Answers are not turned into the client's models: a server may send a `Status`
        where the client expects the object (deletes, evictions), and our code reads JSON anyway.
        With `stream` the raw response is returned for the caller to read (watches).
        """
        kwargs.setdefault("_request_timeout", self._timeout)
        try:
            response = fn(*args, _preload_content=False, **kwargs)
            if stream:
                return response
            data = response.data
            response.release_conn()
        except ApiException as exc:
            if exc.status in expect:
                raise
            raise _translate(exc, what) from exc
        except _TRANSPORT_ERRORS as exc:
            raise _translate(exc, what) from exc
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise ClusterError(f"{what}: Kubernetes answered something that is not JSON") from exc

    def _custom_cluster(self, what: str, verb: str, plural: str, *args: Any, expect: tuple[int, ...] = (),
                        **kwargs: Any) -> Any:
        fn = getattr(self._custom, f"{verb}_cluster_custom_object{kwargs.pop('_sub', '')}")
        if verb.startswith("patch"):
            kwargs.setdefault("_content_type", MERGE_PATCH)
        return self._call(what, fn, kc.API_GROUP, kc.API_VERSION, plural, *args, expect=expect, **kwargs)

    # -- tenancy ----------------------------------------------------------------------------
    def ensure_tenancy(self, name: str) -> TenancyStatus:
        """Tenancy resource, namespace `tenant-<name>`, its CiliumNetworkPolicy, then status Ready."""
        validate_tenant(name)
        namespace = kc.tenant_namespace(name)
        tenancy = self._create_or_adopt_tenancy(name)
        self._ensure_namespace(name)
        self._ensure_network_policy(name)
        status = tenancy_status(tenancy)
        if status.ready and status.namespace == namespace:
            return status
        body = {"status": {
            "phase": kc.TenancyPhase.READY,
            "namespace": namespace,
            "conditions": [{"type": "Ready", "status": "True", "reason": "NamespaceAndPolicyReady",
                            "message": f"namespace {namespace} and its network policy exist",
                            "lastTransitionTime": _now()}],
        }}
        patched = self._custom_cluster(f"set tenancy {name} ready", "patch", kc.TENANCY_PLURAL, name, body,
                                       _sub="_status")
        return tenancy_status(patched or {"metadata": {"name": name}, **body})

    def get_tenancy(self, name: str) -> TenancyStatus | None:
        validate_tenant(name)
        try:
            return tenancy_status(self._custom_cluster(f"get tenancy {name}", "get", kc.TENANCY_PLURAL, name,
                                                       expect=(404,)))
        except ApiException:
            return None

    def tenancy_drift(self, name: str) -> tuple[str, ...]:
        validate_tenant(name)
        body = network_policy_body(name)
        namespace, policy = body["metadata"]["namespace"], body["metadata"]["name"]
        reads = (
            ("tenancy", lambda: self._custom_cluster(f"get tenancy {name}", "get", kc.TENANCY_PLURAL, name,
                                                     expect=(404,))),
            ("namespace", lambda: self._call(f"get namespace {namespace}", self._core.read_namespace, namespace,
                                             expect=(404,))),
            ("network policy", lambda: self._call(
                f"get network policy {namespace}/{policy}", self._custom.get_namespaced_custom_object,
                kc.CILIUM_GROUP, kc.CILIUM_VERSION, namespace, kc.CILIUM_POLICY_PLURAL, policy, expect=(404,))),
        )
        missing = []
        for what, read in reads:
            try:
                read()
            except ApiException:  # the expected 404
                missing.append(what)
        return tuple(missing)

    def _create_or_adopt_tenancy(self, name: str) -> dict[str, Any]:
        try:
            created = self._custom_cluster(f"create tenancy {name}", "create", kc.TENANCY_PLURAL,
                                           tenancy_body(name), expect=(409,))
            if created:
                return created
        except ApiException:
            pass
        return self._custom_cluster(f"get tenancy {name}", "get", kc.TENANCY_PLURAL, name)

    def _ensure_namespace(self, tenant: str) -> None:
        body = namespace_body(tenant)
        name = body["metadata"]["name"]
        try:
            self._call(f"create namespace {name}", self._core.create_namespace, body, expect=(409,))
            return
        except ApiException:
            pass
        existing = self._call(f"get namespace {name}", self._core.read_namespace, name)
        labels = (existing.get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in body["metadata"]["labels"].items()):
            self._call(f"label namespace {name}", self._core.patch_namespace, name,
                       {"metadata": {"labels": body["metadata"]["labels"]}}, _content_type=MERGE_PATCH)

    def _ensure_network_policy(self, tenant: str) -> None:
        body = network_policy_body(tenant)
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        args = (kc.CILIUM_GROUP, kc.CILIUM_VERSION, namespace, kc.CILIUM_POLICY_PLURAL)
        what = f"network policy {namespace}/{name}"
        try:
            self._call(f"create {what}", self._custom.create_namespaced_custom_object, *args, body,
                       expect=(409,))
            return
        except ApiException:
            pass
        existing = self._call(f"get {what}", self._custom.get_namespaced_custom_object, *args, name)
        if existing.get("spec") != body["spec"]:
            self._call(f"patch {what}", self._custom.patch_namespaced_custom_object, *args, name,
                       {"spec": body["spec"]}, _content_type=MERGE_PATCH)

    # -- pods -------------------------------------------------------------------------------
    def create_lease_pod(self, *, lease_id: str, tenant: str, image: str, node: str,
                         gpu_indexes: Sequence[int], command: Sequence[str] = (),
                         startup_timeout_s: int | None = None, predicted_boot_s: float | None = None,
                         env: Mapping[str, str] | None = None) -> PodStatus:
        """Create the lease's pod; an existing pod of the same lease is adopted, another is a conflict."""
        lease_id, indexes = validate_pod_request(lease_id=lease_id, tenant=tenant, image=image, node=node,
                                                 gpu_indexes=gpu_indexes)
        body = lease_pod_body(lease_id=lease_id, tenant=tenant, image=image, node=node, gpu_indexes=indexes,
                              command=command, startup_timeout_s=startup_timeout_s,
                              predicted_boot_s=predicted_boot_s, env=env)
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            created = self._call(f"create pod {namespace}/{name}", self._core.create_namespaced_pod,
                                 namespace, body, expect=(409,))
            if created:
                return pod_status(created)
        except ApiException:
            pass
        existing = self._call(f"get pod {namespace}/{name}", self._core.read_namespaced_pod, name, namespace)
        if (existing.get("metadata") or {}).get("labels", {}).get(kc.LEASE_LABEL) != lease_id:
            raise ClusterConflict(f"pod {namespace}/{name} exists and is not lease {lease_id}'s")
        return pod_status(existing)

    def get_lease_pod(self, *, lease_id: str, tenant: str) -> PodStatus | None:
        lease_id, namespace = validate_lease_id(lease_id), kc.tenant_namespace(validate_tenant(tenant))
        name = kc.lease_pod_name(lease_id)
        try:
            return pod_status(self._call(f"get pod {namespace}/{name}", self._core.read_namespaced_pod, name,
                                         namespace, expect=(404,)))
        except ApiException:
            return None

    def delete_lease_pod(self, *, lease_id: str, tenant: str) -> None:
        lease_id, namespace = validate_lease_id(lease_id), kc.tenant_namespace(validate_tenant(tenant))
        name = kc.lease_pod_name(lease_id)
        with contextlib.suppress(ApiException):
            self._call(f"delete pod {namespace}/{name}", self._core.delete_namespaced_pod, name,
                       namespace, expect=(404,))

    def watch_lease_pods(self, resource_version: str | None = None,
                         timeout: float = 60.0) -> Iterator[PodStatus]:
        """Yield lease pods' statuses until `timeout`.

        Without a resource version it lists first (yielding every pod) and watches from the list's
        version. A watch that drops is resumed from the last version seen; 410 Gone relists.
        """
        deadline = time.monotonic() + timeout
        rv = resource_version
        if rv is None:
            rv = yield from self._relist()
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                resp = self._call("watch pods", self._core.list_pod_for_all_namespaces, expect=(410,),
                                  label_selector=kc.LEASE_LABEL, watch=True, resource_version=rv,
                                  allow_watch_bookmarks=True, timeout_seconds=max(1, int(remaining)),
                                  stream=True, _request_timeout=(self._timeout, remaining + 1))
            except ApiException:
                rv = yield from self._relist()
                continue
            gone = False
            try:
                for line in iter_resp_lines(resp):
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            gone = True
                            break
                        raise ClusterUnavailable(f"watch pods: {obj.get('message', obj)}")
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if kind != "BOOKMARK":
                        yield pod_status(obj, deleted=kind == "DELETED")
            except _TRANSPORT_ERRORS:
                pass  # the watch dropped: resume from `rv`
            finally:
                resp.release_conn()
            if gone:
                rv = yield from self._relist()

    def _relist(self) -> Iterator[PodStatus]:
        """Yield every lease pod; return the list's resource version to watch from."""
        listing = self._call("list pods", self._core.list_pod_for_all_namespaces,
                             label_selector=kc.LEASE_LABEL)
        for item in listing.get("items") or []:
            yield pod_status(item)
        return (listing.get("metadata") or {}).get("resourceVersion") or None

    # -- GpuLease ---------------------------------------------------------------------------
    def create_gpu_lease(self, *, lease_id: str, tenant: str, node: str, gpu_module_ids: Sequence[int],
                         pci_addresses: Sequence[str], pod: str) -> GpuLeaseStatus:
        """Create the GpuLease (with our finalizer) in phase Reserved; an existing one is adopted."""
        lease_id, node = validate_lease_id(lease_id), validate_node(node)
        validate_tenant(tenant)
        body = gpu_lease_body(lease_id=lease_id, tenant=tenant, node=node, gpu_module_ids=gpu_module_ids,
                              pci_addresses=pci_addresses, pod=pod)
        name = body["metadata"]["name"]
        try:
            obj = self._custom_cluster(f"create gpulease {name}", "create", kc.GPULEASE_PLURAL, body,
                                       expect=(409,))
        except ApiException:
            obj = None
        obj = obj or self._custom_cluster(f"get gpulease {name}", "get", kc.GPULEASE_PLURAL, name)
        if (obj.get("spec") or {}).get("leaseId") != lease_id:
            raise ClusterConflict(f"gpulease {name} exists for another lease")
        if not (obj.get("status") or {}).get("phase"):
            return self.set_gpu_lease_phase(lease_id, kc.GpuLeasePhase.RESERVED)
        return gpu_lease_status(obj)

    def get_gpu_lease(self, lease_id: str) -> GpuLeaseStatus | None:
        name = kc.lease_pod_name(validate_lease_id(lease_id))
        try:
            return gpu_lease_status(self._custom_cluster(f"get gpulease {name}", "get", kc.GPULEASE_PLURAL,
                                                         name, expect=(404,)))
        except ApiException:
            return None

    def set_gpu_lease_phase(self, lease_id: str, phase: str) -> GpuLeaseStatus:
        if phase not in kc.GpuLeasePhase.ALL:
            raise ClusterError(f"unknown GpuLease phase {phase!r}")
        name = kc.lease_pod_name(validate_lease_id(lease_id))
        obj = self._custom_cluster(f"set gpulease {name} {phase}", "patch", kc.GPULEASE_PLURAL, name,
                                   {"status": {"phase": phase}}, _sub="_status")
        return gpu_lease_status(obj)

    def delete_gpu_lease(self, lease_id: str) -> None:
        name = kc.lease_pod_name(validate_lease_id(lease_id))
        with contextlib.suppress(ApiException):
            self._custom_cluster(f"delete gpulease {name}", "delete", kc.GPULEASE_PLURAL, name, expect=(404,))

    def finalize_gpu_lease(self, lease_id: str, *, levelled: bool) -> GpuLeaseStatus | None:
        """Remove our finalizer, guarded by resourceVersion; a 409 re-reads and tries again."""
        name = kc.lease_pod_name(validate_lease_id(lease_id))
        if not levelled:
            raise FailedPrecondition(f"gpulease {name}: GPUs not scrubbed and levelled, finalizer stays")
        for _ in range(self._retries):
            try:
                obj = self._custom_cluster(f"get gpulease {name}", "get", kc.GPULEASE_PLURAL, name,
                                           expect=(404,))
            except ApiException:
                return None
            finalizers = (obj.get("metadata") or {}).get("finalizers") or []
            if kc.GPULEASE_FINALIZER not in finalizers:
                return gpu_lease_status(obj)
            body = {"metadata": {"finalizers": [f for f in finalizers if f != kc.GPULEASE_FINALIZER],
                                 "resourceVersion": obj["metadata"].get("resourceVersion")}}
            try:
                patched = self._custom_cluster(f"finalize gpulease {name}", "patch", kc.GPULEASE_PLURAL, name,
                                               body, expect=(409, 404))
            except ApiException as exc:
                if exc.status == 404:
                    return None
                continue
            return gpu_lease_status(patched)
        raise ClusterConflict(f"gpulease {name}: finalizer removal kept conflicting")

    # -- nodes ------------------------------------------------------------------------------
    def cordon(self, node: str) -> None:
        self._set_unschedulable(validate_node(node), True)

    def uncordon(self, node: str) -> None:
        self._set_unschedulable(validate_node(node), False)

    def _set_unschedulable(self, node: str, value: bool) -> None:
        self._call(f"{'cordon' if value else 'uncordon'} {node}", self._core.patch_node, node,
                   {"spec": {"unschedulable": value or None}}, _content_type=MERGE_PATCH)

    def drain(self, node: str) -> DrainReport:
        """Cordon, then evict each pod on the node; a PodDisruptionBudget's 429 is reported, not raised."""
        self.cordon(node)
        listing = self._call(f"list pods on {node}", self._core.list_pod_for_all_namespaces,
                             field_selector=f"spec.nodeName={node}")
        evicted: list[str] = []
        refused: list[EvictionRefusal] = []
        for pod in listing.get("items") or []:
            meta = pod.get("metadata") or {}
            if _skip_on_drain(pod):
                continue
            name, namespace = meta["name"], meta.get("namespace", "default")
            body = {"apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": name, "namespace": namespace}}
            try:
                self._call(f"evict {namespace}/{name}", self._core.create_namespaced_pod_eviction, name,
                           namespace, body, expect=(404, 429))
            except ApiException as exc:
                if exc.status == 429:
                    reason = _status_message(exc)
                    refused.append(EvictionRefusal(pod=name, namespace=namespace, reason=reason))
                continue
            evicted.append(f"{namespace}/{name}")
        return DrainReport(node=node, evicted=tuple(evicted), refused=tuple(refused))


def _skip_on_drain(pod: dict[str, Any]) -> bool:
    """Like kubectl drain: leave DaemonSet pods, mirror pods and pods that already ended."""
    meta = pod.get("metadata") or {}
    if any(ref.get("kind") == "DaemonSet" for ref in meta.get("ownerReferences") or []):
        return True
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return True
    return (pod.get("status") or {}).get("phase") in (PodPhase.SUCCEEDED, PodPhase.FAILED)
