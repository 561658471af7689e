"""Manifests under deploy/: they load, are well formed, match hardware.kube_constants, CRD schemas are
valid JSON Schema that accept what the adapter sends, and RBAC grants exactly what the adapter uses."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from hardware import kube_constants as kc
from hardware.kube import KubernetesCluster, gpu_lease_body, tenancy_body
from tests.hardware.kube_mock import KubeMock

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_every_manifest_is_well_formed():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in _docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path


def test_kustomization_lists_every_manifest():
    [kustomization] = _docs(DEPLOY / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk


def _crd(plural: str) -> dict:
    return _all()[("CustomResourceDefinition", f"{plural}.{kc.API_GROUP}")]


def _schema(plural: str) -> dict:
    [version] = _crd(plural)["spec"]["versions"]
    assert version["name"] == kc.API_VERSION and version["served"] and version["storage"]
    schema = version["openAPIV3Schema"] if "openAPIV3Schema" in version else version["schema"]["openAPIV3Schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


@pytest.mark.parametrize(("plural", "kind"), [(kc.TENANCY_PLURAL, kc.TENANCY_KIND),
                                              (kc.GPULEASE_PLURAL, kc.GPULEASE_KIND)])
def test_crds_are_cluster_scoped_with_status_and_printer_columns(plural, kind):
    crd = _crd(plural)
    assert crd["spec"]["group"] == kc.API_GROUP and crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["names"]["plural"] == plural
    [version] = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Phase", "Age"}
    _schema(plural)


def test_tenancy_schema_accepts_what_the_adapter_sends_and_validates_the_name():
    validator = jsonschema.Draft7Validator(_schema(kc.TENANCY_PLURAL))
    body = tenancy_body("landon")
    body["status"] = {"phase": "Ready", "namespace": "tenant-landon", "conditions": [
        {"type": "Ready", "status": "True", "reason": "NamespaceAndPolicyReady", "message": "",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    assert not list(validator.iter_errors(body))
    for bad in ["Landon", "-x", "x_y", "a" * 57, ""]:
        assert list(validator.iter_errors({**body, "spec": {"tenant": bad}})), bad
    assert list(validator.iter_errors({**body, "status": {"phase": "Sideways"}}))


def test_gpulease_schema_accepts_what_the_adapter_sends():
    validator = jsonschema.Draft7Validator(_schema(kc.GPULEASE_PLURAL))
    body = gpu_lease_body(lease_id="42", tenant="landon", node="gpu-node-1", gpu_module_ids=[7, 8],
                          pci_addresses=["0000:18:00.0", "0000:2a:00.0"], pod="lease-42")
    body["status"] = {"phase": kc.GpuLeasePhase.SCRUBBING}
    assert not list(validator.iter_errors(body))
    for phase in kc.GpuLeasePhase.ALL:
        assert not list(validator.iter_errors({**body, "status": {"phase": phase}}))
    broken = copy.deepcopy(body)
    broken["spec"]["pciAddresses"] = ["18:00.0"]
    assert list(validator.iter_errors(broken))
    broken = copy.deepcopy(body)
    del broken["spec"]["node"]
    assert list(validator.iter_errors(broken))


def test_runtime_class_matches_the_pods():
    runtime = _all()[("RuntimeClass", kc.RUNTIME_CLASS)]
    assert runtime["handler"] == kc.RUNTIME_CLASS


def test_agent_daemonset_mounts_the_host_paths_it_needs():
    daemonset = _all()[("DaemonSet", "gpu-console-agent")]
    spec = daemonset["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["securityContext"]["privileged"] is True
    assert {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v} == {
        "/sys", "/dev/vfio", "/var/lib/kubelet/device-plugins", "/var/run/cdi", "/etc/gpu-console"}
    assert spec["nodeSelector"]["gpuconsole.dev/gpu-node"] == "true"
    assert any(t["key"] == "node.kubernetes.io/unschedulable" for t in spec["tolerations"])
    assert spec["serviceAccountName"] == "gpu-console-agent"


def test_workloads_use_existing_service_accounts():
    found = _all()
    accounts = {name for kind, name in found if kind == "ServiceAccount"}
    for (kind, name), doc in found.items():
        if kind in ("Deployment", "DaemonSet"):
            assert doc["spec"]["template"]["spec"]["serviceAccountName"] in accounts, name
            assert doc["metadata"]["namespace"] == "gpu-console"
    service = found[("Service", "gpu-console-web")]
    web = found[("Deployment", "gpu-console-web")]
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()


def _granted(role: str) -> set[tuple[str, str, str]]:
    rules = _all()[("ClusterRole", role)]["rules"]
    granted = set()
    for rule in rules:
        for values in (rule["apiGroups"], rule["resources"], rule["verbs"]):
            assert "*" not in values, f"{role} uses a wildcard"
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return granted


def _used_by_the_adapter() -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) KubernetesCluster sends, recorded from a full scenario."""
    mock = KubeMock().start()
    try:
        cluster = KubernetesCluster(mock.api_client(), request_timeout=5)
        mock.put("/api/v1/namespaces", {"metadata": {"name": "tenant-acme"}})  # adopted: labels patched
        mock.put("/apis/cilium.io/v2/namespaces/tenant-acme/ciliumnetworkpolicies",
                 {"metadata": {"name": kc.NETWORK_POLICY_NAME}, "spec": {}})  # adopted: spec patched
        cluster.ensure_tenancy("acme")
        cluster.ensure_tenancy("acme")
        cluster.create_lease_pod(lease_id="1", tenant="acme", image="busybox", node="n1", gpu_indexes=[0])
        cluster.get_lease_pod(lease_id="1", tenant="acme")
        list(cluster.watch_lease_pods(timeout=1))
        cluster.create_gpu_lease(lease_id="1", tenant="acme", node="n1", gpu_module_ids=[1],
                                 pci_addresses=["0000:18:00.0"], pod="lease-1")
        cluster.set_gpu_lease_phase("1", kc.GpuLeasePhase.LEVELLED)
        cluster.delete_gpu_lease("1")
        cluster.finalize_gpu_lease("1", levelled=True)
        mock.put("/api/v1/nodes", {"metadata": {"name": "n1"}, "spec": {}})
        mock.put("/api/v1/namespaces/x/pods", {"metadata": {"name": "p"}, "spec": {
            "nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}})
        cluster.drain("n1")
        cluster.uncordon("n1")
        cluster.delete_lease_pod(lease_id="1", tenant="acme")
    finally:
        mock.stop()
    used = set()
    for request in mock.requests:
        parts = [p for p in request.path.split("/") if p]
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        if rest[0] == "namespaces" and len(rest) >= 3:
            rest = rest[2:]
        resource = "/".join([rest[0], *rest[2:3]])
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(request.method)
        if verb is None:
            verb = "get" if len(rest) > 1 else ("watch" if request.query.get("watch") else "list")
        used.add((group, resource, verb))
    return used


def test_console_rbac_grants_what_the_adapter_uses_and_little_more():
    granted, used = _granted("gpu-console"), _used_by_the_adapter()
    assert used <= granted, f"missing: {sorted(used - granted)}"
    # Granted beyond the adapter's own calls, each for a stated reason:
    expected_extra = {
        (kc.API_GROUP, "tenancies", "list"), (kc.API_GROUP, "tenancies", "watch"),  # reconciler
        (kc.API_GROUP, "tenancies", "delete"),  # tenant deletion
        (kc.API_GROUP, "gpuleases", "list"), (kc.API_GROUP, "gpuleases", "watch"),  # reconciler
        (kc.API_GROUP, "tenancies/status", "get"), (kc.API_GROUP, "gpuleases/status", "get"),
        (kc.API_GROUP, "gpuleases/finalizers", "update"),  # finalizers on an object we own
        ("", "nodes", "get"),  # operators' node view
    }
    assert granted - used <= expected_extra, f"unexplained: {sorted(granted - used - expected_extra)}"
    assert not any(resource in ("secrets", "configmaps") for _, resource, _ in granted)


def test_agent_rbac_is_read_only_on_nodes():
    assert _granted("gpu-console-agent") == {("", "nodes", "get")}
