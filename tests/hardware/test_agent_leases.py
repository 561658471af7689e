"""SetGpuLeases / ListGpuLeases over real gRPC (loopback port 0, mTLS) against a simulated host."""

from __future__ import annotations

import pytest

from hardware.agent import convert
from hardware.agent.routing import HostTable
from hardware.deviceplugin.leases import grant_of, is_allocatable
from hardware.exceptions import InvalidArgument, NotFound
from hardware.types import GpuLeaseBinding
from tests.simulator.support import make_pki, served_host


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def agent(pki):
    with served_host(pki) as pair:
        yield pair


def _lease(lease_id, modules, phase="Ready", ns="tenant-acme"):
    return GpuLeaseBinding(lease_id, ns, f"lease-{lease_id}", tuple(modules), phase)


def test_binding_round_trips_through_protobuf():
    binding = _lease("7", [6, 7], "Scrubbing")
    assert convert.gpu_lease_from_pb(convert.gpu_lease_to_pb(binding)) == binding


def test_console_sets_the_complete_lease_set(agent):
    _, client = agent
    assert client.list_gpu_leases() == []
    leases = [_lease("2", [4, 5], "Scrubbing"), _lease("1", [0, 1, 2, 3])]
    client.set_gpu_leases(leases)
    client.set_gpu_leases(leases)  # idempotent
    assert client.list_gpu_leases() == sorted(leases, key=lambda b: b.lease_id)

    # Level-based: a lease not named any more is forgotten, a changed phase replaces the old one.
    client.set_gpu_leases([_lease("2", [4, 5], "Leveling")])
    assert client.list_gpu_leases() == [_lease("2", [4, 5], "Leveling")]
    client.set_gpu_leases([])
    assert client.list_gpu_leases() == []


def test_lease_book_follows_set_gpu_leases(pki):
    from hardware.agent_client import AgentClient
    from simulator.agent import serve_sim_host
    from simulator.clock import SimClock
    from simulator.host import SimHost

    host = SimHost("node-b", "hgx-h100-8", clock=SimClock(20_000.0))
    server = serve_sim_host(host, tls=pki.node)
    try:
        with AgentClient(server.address, credentials=pki.console, timeout=5, retries=0) as client:
            client.set_gpu_leases([_lease("9", [6, 7]), _lease("8", [1], "Scrubbing")])
        book = server.resolver.lease_book("node-b")
        ready, scrubbing = grant_of(book, "6"), grant_of(book, "1")
        assert ready.lease_id == "9" and ready.ready and ready.device_ids == {"6", "7"}
        assert scrubbing.lease_id == "8" and not scrubbing.ready and scrubbing.state == "Scrubbing"
        assert grant_of(book, "0") is None
    finally:
        server.stop(grace=0)


@pytest.mark.parametrize("leases", [
    [_lease("", [1])],
    [_lease("1", [1]), _lease("1", [2])],
    [_lease("1", [1, 2]), _lease("2", [2, 3])],
])
def test_inconsistent_lease_sets_are_refused_and_change_nothing(agent, leases):
    _, client = agent
    client.set_gpu_leases([_lease("keep", [7])])
    with pytest.raises(InvalidArgument):
        client.set_gpu_leases(leases)
    assert client.list_gpu_leases() == [_lease("keep", [7])]


def test_another_nodes_key_is_refused(pki):
    from hardware.agent_client import AgentClient
    from simulator.agent import serve_sim_host
    from simulator.clock import SimClock
    from simulator.host import SimHost

    server = serve_sim_host(SimHost("node-c", "hgx-h100-8", clock=SimClock(20_000.0)), tls=pki.node)
    try:
        client = AgentClient(server.address, credentials=pki.console, timeout=5, retries=0, node="node-z")
        with client, pytest.raises(NotFound):
            client.set_gpu_leases([_lease("1", [1])])
    finally:
        server.stop(grace=0)


def test_a_multiplexing_agent_keeps_one_book_per_host():
    table = HostTable({"a": object(), "b": object()}, lambda: iter(()))
    table.lease_book("a").set_bindings([_lease("1", [1])])
    assert [b.lease_id for b in table.lease_book("a").bindings()] == ["1"]
    assert table.lease_book("b").bindings() == ()
    with pytest.raises(InvalidArgument):
        table.lease_book(None)


@pytest.mark.parametrize(("phase", "allocatable"), [
    ("Ready", True), ("Reserved", True), ("Running", True), ("booting", True), ("running", True),
    ("Scrubbing", False), ("Leveling", False), ("Levelled", False), ("Releasing", False), ("Failed", False),
    ("", False),
])
def test_allocatable_phases(phase, allocatable):
    assert is_allocatable(phase) is allocatable
