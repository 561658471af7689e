"""SimAdmin takes a host's node agent down and up: NodeAgent answers UNAVAILABLE and its health
streams end while SimAdmin keeps answering; the host and its VMs run on."""

from __future__ import annotations

import threading

import pytest

from hardware.agent_client import AgentClient
from hardware.exceptions import AgentUnavailable
from hardware.types import HealthKind
from simulator.fleet import SimFleet
from tests.simulator.support import served_host


def test_agent_down_answers_unavailable_and_ends_streams_then_comes_back(pki):
    with served_host(pki, accel=10.0) as (host, client):
        admin = client.sim_admin()
        vm = admin.start_vm("vm-1", pod_name="p", gpu_module_ids=[2], guest_ram_gib=8)
        stream = client.watch_health()
        ended = threading.Event()

        def drain():
            for _ in stream:
                pass
            ended.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        assert admin.set_agent(up=False) is False
        assert ended.wait(5), "the open health stream ends with the agent"
        with pytest.raises(AgentUnavailable, match="down"):
            AgentClient(client.endpoint, credentials=pki.console, retries=0, timeout=2).get_inventory()
        # SimAdmin is the simulator's control plane: it answers, and the VM runs on.
        assert admin.agent_up() is False
        assert admin.get_vm(vm.vm_id).vm_id == "vm-1"
        admin.inject_xid(3, 94)  # happens on the hardware; a stopped agent reports nothing
        assert host.gpus[3].ecc_uncorrected == 1
        assert admin.set_agent(up=True) is True
        assert client.get_inventory().hostname == host.hostname
        events = client.watch_health()
        admin.inject_xid(3, 119)
        assert next(events).kind == HealthKind.XID
        events.cancel()


def test_multiplexed_fleet_takes_one_agent_down():
    with SimFleet(3, per_port_limit=1, insecure=True, accel=1000) as fleet:
        a, b, _ = fleet.endpoints.values()
        with AgentClient(a.address, node=a.node, insecure=True, retries=0) as ca, \
                AgentClient(b.address, node=b.node, insecure=True, retries=0) as cb:
            ca.sim_admin().set_agent(up=False)
            with pytest.raises(AgentUnavailable):
                ca.list_partitions()
            assert cb.list_partitions(), "the other hosts on the port answer"
            ca.sim_admin().set_agent(up=True)
            assert ca.list_partitions()
