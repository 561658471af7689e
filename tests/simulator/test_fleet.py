"""SimFleet: one port per server up to a limit, one multiplexed port beyond it, routed by node key."""

from __future__ import annotations

import pytest

from hardware.agent_client import AgentClient
from hardware.exceptions import InvalidArgument, NotFound
from simulator.fleet import SimFleet


def client_for(fleet, name, pki, **kw):
    ep = fleet.endpoints[name]
    return AgentClient(ep.address, credentials=pki.console, node=ep.node, timeout=5, **kw)


def test_small_fleet_gets_a_port_per_server(pki):
    with SimFleet(3, tls=pki.node, per_port_limit=4, accel=1000) as fleet:
        assert not fleet.multiplexed
        assert len({ep.address for ep in fleet.endpoints.values()}) == 3
        for name in fleet.hosts:
            with client_for(fleet, name, pki) as c:
                assert c.get_inventory().hostname == name


def test_large_fleet_is_multiplexed_on_one_port(pki):
    with SimFleet(5, tls=pki.node, per_port_limit=2, accel=1000, platform="dgx-h100") as fleet:
        assert fleet.multiplexed
        assert len({ep.address for ep in fleet.endpoints.values()}) == 1
        names = list(fleet.hosts)
        for name in names:
            with client_for(fleet, name, pki) as c:
                inv = c.get_inventory()
                assert (inv.hostname, inv.platform) == (name, "dgx-h100")
        # Routing keeps hosts apart: activating on one leaves the others alone.
        with client_for(fleet, names[0], pki) as c:
            c.activate_partition(0)
        with client_for(fleet, names[1], pki) as c:
            assert not any(p.active for p in c.list_partitions())
        address = fleet.endpoints[names[0]].address
        with AgentClient(address, credentials=pki.console, node="nobody", timeout=5) as c, pytest.raises(NotFound):
            c.get_inventory()
        with AgentClient(address, credentials=pki.console, timeout=5) as c, pytest.raises(InvalidArgument):
            c.get_inventory()


def test_fleet_wide_health_watch_on_the_multiplexed_port(pki):
    with SimFleet(4, tls=pki.node, per_port_limit=1, accel=1000) as fleet:
        names = list(fleet.hosts)
        address = fleet.endpoints[names[0]].address
        with AgentClient(address, credentials=pki.console, timeout=5) as watcher:
            stream = watcher.watch_health()
            for name in (names[1], names[3]):
                with client_for(fleet, name, pki) as c:
                    c.sim_admin().inject_thermal(1, 90)
            got = {next(stream).hostname, next(stream).hostname}
            stream.cancel()
        assert got == {names[1], names[3]}


def test_per_host_watch_only_sees_its_host(pki):
    with SimFleet(2, tls=pki.node, per_port_limit=1, accel=1000) as fleet:
        a, b = fleet.hosts
        with client_for(fleet, a, pki) as ca, client_for(fleet, b, pki) as cb:
            stream = ca.watch_health()
            cb.sim_admin().inject_xid(1, 94)
            ca.sim_admin().inject_xid(2, 94)
            event = next(stream)
            stream.cancel()
        assert (event.hostname, event.module_id) == (a, 2)


def test_fleet_needs_tls_or_insecure():
    with pytest.raises(ValueError):
        SimFleet(1)
