"""`manage.py simfleet --once`: serve simulated agents over mTLS, register the servers from what the
agents report, stop. A second run on the same ports changes nothing."""

from __future__ import annotations

import io
import socket

import pytest
from django.core.management import call_command

from console.models import AuditEvent
from fleet.models import Gpu, NvSwitch, Partition, Server
from hardware.tls import CA_CERT


def _free_port_pair() -> int:
    """A port p with p and p+1 free on loopback right now (the command binds them itself)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two adjacent free ports")


def _snapshot():
    return (
        list(Server.objects.order_by("hostname").values_list(
            "hostname", "platform", "variant", "rack", "slot", "agent_endpoint", "state", "host_kernel")),
        list(Gpu.objects.order_by("server__hostname", "module_id").values_list(
            "server__hostname", "module_id", "pci_address", "uuid", "serial", "firmware_version", "state")),
        list(NvSwitch.objects.order_by("server__hostname", "index").values_list("server__hostname", "pci_address")),
        list(Partition.objects.order_by("server__hostname", "partition_id").values_list(
            "server__hostname", "partition_id", "state")),
        AuditEvent.objects.count(),
    )


def _simfleet(port_base: int) -> str:
    out = io.StringIO()
    call_command("simfleet", servers=2, racks=1, port_base=port_base, accel=2000.0, prefix="cmd", once=True,
                 stdout=out)
    return out.getvalue()


def test_simfleet_once_registers_over_mtls_and_is_idempotent(transactional_db, settings, tmp_path):
    settings.AGENT_TLS_DIR = tmp_path
    settings.AGENT_INSECURE = False
    port = _free_port_pair()

    first = _simfleet(port)
    assert (tmp_path / CA_CERT).exists()  # a development PKI was made: the agents spoke mTLS
    assert {p.name for p in tmp_path.glob("*.pem")} >= {CA_CERT, "console.pem", "simfleet.pem"}
    servers = list(Server.objects.order_by("hostname"))
    assert [s.hostname for s in servers] == ["cmd-hgx-h100-8-0001", "cmd-hgx-h100-8-0002"]
    assert [s.agent_endpoint for s in servers] == [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
    assert [(s.rack, s.slot) for s in servers] == [("cmd-r01", 1), ("cmd-r01", 2)]
    assert Gpu.objects.count() == 16 and NvSwitch.objects.count() == 8
    assert first.count(" registered") == 2
    assert AuditEvent.objects.filter(verb="fleet.server.registered").count() == 2

    before = _snapshot()
    second = _simfleet(port)
    assert second.count(" unchanged") == 2, second
    assert _snapshot() == before


@pytest.mark.parametrize("servers", [0, -1])
def test_simfleet_refuses_no_servers(db, servers):
    from django.core.management import CommandError

    with pytest.raises(CommandError):
        call_command("simfleet", servers=servers, once=True, insecure=True)


def test_simfleet_serves_the_simulated_cluster_over_the_kubernetes_api(transactional_db, settings, tmp_path,
                                                                      monkeypatch):
    """Next to its agents the command serves the cluster's API and writes a kubeconfig for it; pods
    start their VMs through SimAdmin over the same mTLS the console uses."""
    from hardware.kube import KubernetesCluster
    from simulator.management.commands.simfleet import KUBECONFIG_NAME, Command

    settings.AGENT_TLS_DIR = tmp_path / "pki"
    settings.AGENT_INSECURE = False
    settings.VAR_DIR = tmp_path
    seen = {}

    def serve(command):
        cluster = KubernetesCluster(kubeconfig=str(tmp_path / KUBECONFIG_NAME), request_timeout=5)
        seen["tenancy"] = cluster.ensure_tenancy("acme")
        node = Server.objects.order_by("hostname").first().k8s_node_name
        seen["pod"] = cluster.create_lease_pod(lease_id="1", tenant="acme", image="busybox", node=node,
                                               gpu_indexes=[1])
        seen["node"] = node

    monkeypatch.setattr(Command, "_serve_until_signalled", serve)
    out = io.StringIO()
    call_command("simfleet", servers=1, racks=1, accel=2000.0, prefix="kube", kube_port=0, stdout=out)

    assert "Kubernetes API at http://127.0.0.1:" in out.getvalue()
    assert seen["tenancy"].ready
    pod = seen["pod"]
    # Bound to its node and its VM booting: SimAdmin's StartVm answered over mTLS.
    assert (pod.node, pod.phase, pod.reason) == (seen["node"], "Pending", "ContainerCreating")


@pytest.mark.parametrize("option, expected", [(None, 0.0), (600.0, 600.0)])
def test_containers_run_until_released_unless_given_workload_seconds(transactional_db, settings, tmp_path,
                                                                     monkeypatch, option, expected):
    """By default (SIM_WORKLOAD_S 0) a lease's container runs until the lease is released."""
    from simulator.management.commands import simfleet

    settings.VAR_DIR = tmp_path
    seen = {}
    original = simfleet.KubeApiServer.for_fleet

    def for_fleet(fleet, **kw):
        seen["workload_seconds"] = kw["workload_seconds"]
        return original(fleet, **kw)

    monkeypatch.setattr(simfleet.KubeApiServer, "for_fleet", for_fleet)
    monkeypatch.setattr(simfleet.Command, "_serve_until_signalled", lambda command: None)
    extra = {} if option is None else {"workload_seconds": option}
    call_command("simfleet", servers=1, racks=1, accel=2000.0, prefix=f"wl{int(expected)}", kube_port=0,
                 insecure=True, stdout=io.StringIO(), **extra)
    assert seen["workload_seconds"] == expected
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="workload-seconds"):
        call_command("simfleet", servers=1, once=True, insecure=True, workload_seconds=-1)
    with pytest.raises(CommandError, match="telemetry-interval"):
        call_command("simfleet", servers=1, once=True, insecure=True, telemetry_interval=-1)
