"""The console predicts a server's boots from the features its agent reported (never from the
simulator's internals), and the prediction is what the simulator then plays."""

from __future__ import annotations

import dataclasses

import pytest

from console.audit import Actor
from fleet.boot import server_boot_estimate
from fleet.inventory import server_register_from_inventory
from fleet.models import Server
from hardware.agent_client import AgentClient
from hardware.boot_model import estimate_boot, parse_kernel_version
from simulator.fleet import SimFleet

ACTOR = Actor.system("tests", source="simulator")
GUEST_RAM_GIB = 64


@pytest.fixture
def mixed_fleet():
    """Four simulated servers with the seeded mix of host kernels and boot features."""
    fleet = SimFleet(4, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=2000.0, seed=3,
                     feature_mix=True).start()
    try:
        yield fleet
    finally:
        fleet.stop()


def _register_all(fleet) -> list[Server]:
    servers = []
    for slot, endpoint in enumerate(fleet.endpoints.values(), start=1):
        with AgentClient(endpoint.address, node=endpoint.node, insecure=True) as client:
            inventory = client.get_inventory()
        servers.append(server_register_from_inventory(
            inventory=inventory, rack="r1", slot=slot, agent_endpoint=endpoint.address, actor=ACTOR,
            source="simulator").server)
    return servers


@pytest.mark.django_db
def test_the_recorded_features_predict_what_the_simulator_plays(mixed_fleet):
    servers = _register_all(mixed_fleet)
    assert {parse_kernel_version(s.host_kernel_version) for s in servers} == {(5, 15), (6, 8), (6, 12)}
    totals = set()
    for server in servers:
        host = mixed_fleet.hosts[server.hostname]
        row = Server.objects.get(pk=server.pk)
        assert (row.qemu_version, row.guest_kernel_version, row.guest_firmware, row.init_system) == (
            host.features.qemu_version, host.features.guest_kernel, host.features.guest_firmware,
            host.features.init_system)
        for gpus in (1, 8):
            predicted = server_boot_estimate(row, gpus=gpus, guest_ram_gib=GUEST_RAM_GIB)
            played = estimate_boot(gpus, platform=host.platform, guest_ram_gib=GUEST_RAM_GIB,
                                   **host.features.boot_arguments())
            assert predicted == played
        totals.add(round(server_boot_estimate(row, gpus=8, guest_ram_gib=GUEST_RAM_GIB).total_seconds))
    assert len(totals) >= 3  # the servers differ the way the model says


@pytest.mark.django_db
def test_unknown_features_are_predicted_as_the_seeds_host(mixed_fleet):
    [server, *_] = _register_all(mixed_fleet)
    Server.objects.filter(pk=server.pk).update(host_kernel_version="", qemu_version="", guest_kernel_version="",
                                               guest_firmware="", init_system="", plug_mode="hot",
                                               iommu_backend="vfio-type1", hugepages=False)
    row = Server.objects.get(pk=server.pk)
    seeds_host = estimate_boot(8, platform="hgx-h100-8", host_kernel="5.15.0-105-generic", plug_mode="hot",
                               guest_ram_gib=GUEST_RAM_GIB)
    assert server_boot_estimate(row, gpus=8, guest_ram_gib=GUEST_RAM_GIB) == seeds_host


@pytest.mark.django_db
def test_a_guest_feature_the_fleet_does_not_know_is_recorded_as_unknown(mixed_fleet):
    endpoint = next(iter(mixed_fleet.endpoints.values()))
    with AgentClient(endpoint.address, node=endpoint.node, insecure=True) as client:
        inventory = dataclasses.replace(client.get_inventory(), init_system="upstart", guest_firmware="coreboot")
    server = server_register_from_inventory(inventory=inventory, rack="r1", slot=1, agent_endpoint=endpoint.address,
                                            actor=ACTOR, source="simulator").server
    row = Server.objects.get(pk=server.pk)
    assert (row.init_system, row.guest_firmware) == ("", "")
