"""fleet.inventory against real simulated agents: GetInventory over gRPC on a loopback port (port 0,
plaintext) from a SimFleet, written into Server/Gpu/NvSwitch rows."""

from __future__ import annotations

import dataclasses

import pytest
from django.core.exceptions import ValidationError

from console.audit import Actor
from console.models import AuditEvent
from fleet.inventory import server_register_from_inventory, server_sync_inventory
from fleet.models import Gpu, NvSwitch, Partition, Server
from hardware.agent_client import AgentClient
from hardware.platforms import PLATFORMS, get_platform
from simulator.fleet import SimFleet

ACTOR = Actor.system("tests", source="simulator")
ALL_VARIANTS = [(p.key, v.key) for p in PLATFORMS.values() for v in p.variants]


@pytest.fixture
def agent():
    """One simulated HGX H100 (Supermicro) server; yields an AgentClient on it."""
    fleet = SimFleet(1, platform="hgx-h100-8", variant="supermicro", insecure=True, accel=2000.0).start()
    endpoint = next(iter(fleet.endpoints.values()))
    try:
        with AgentClient(endpoint.address, node=endpoint.node, insecure=True) as client:
            yield client
    finally:
        fleet.stop()


def _register(client: AgentClient, *, rack: str = "r1", slot: int = 1):
    return server_register_from_inventory(
        inventory=client.get_inventory(), rack=rack, slot=slot, agent_endpoint=client.endpoint, actor=ACTOR,
        source="simulator",
    )


def _rows(server: Server) -> tuple:
    gpus = list(Gpu.objects.filter(server=server).order_by("module_id").values())
    switches = list(NvSwitch.objects.filter(server=server).order_by("index").values())
    partitions = list(Partition.objects.filter(server=server).order_by("partition_id").values())
    srv = Server.objects.filter(pk=server.pk).values().get()
    srv.pop("last_seen_at")
    return srv, gpus, switches, partitions


def test_register_creates_rows_from_the_agent(db, agent):
    inventory = agent.get_inventory()
    result = _register(agent)
    server = result.server
    spec = get_platform("hgx-h100-8")
    assert result.created and result.changed and result.missing_modules == ()
    assert (server.hostname, server.platform, server.variant) == (inventory.hostname, "hgx-h100-8", "supermicro")
    assert server.agent_endpoint == agent.endpoint
    assert server.gpus.count() == spec.gpu_count
    assert server.nvswitches.count() == len(inventory.nvswitches) == spec.nvswitch_count
    assert server.partitions.count() == len(spec.partitions)
    by_module = {g.module_id: g for g in server.gpus.all()}
    for info in inventory.gpus:
        gpu = by_module[info.module_id]
        assert (gpu.pci_address, gpu.uuid, gpu.serial, gpu.firmware_version, gpu.vram_mib) == (
            info.pci.address, info.uuid, info.serial, info.firmware_version, info.vram_mib,
        )
    verbs = list(AuditEvent.objects.filter(target_type="fleet.server", target_id=str(server.pk))
                 .order_by("id").values_list("verb", flat=True))
    assert verbs == ["fleet.server.registered", "fleet.server.inventory_synced"]


def test_second_registration_changes_nothing(db, agent):
    first = _register(agent)
    rows, events = _rows(first.server), AuditEvent.objects.count()
    again = _register(agent, rack="elsewhere", slot=9)
    assert again.server.pk == first.server.pk
    assert not again.created and not again.changed and again.changes == {}
    assert _rows(first.server) == rows
    assert AuditEvent.objects.count() == events


def test_sync_records_firmware_flashed_on_the_host(db, agent):
    server = _register(agent).server
    gpu = server.gpus.get(module_id=3)
    old = gpu.firmware_version
    agent.sim_admin().flash_firmware(3, "96.00.74.00.01")
    result = server_sync_inventory(server=server, inventory=agent.get_inventory(), actor=ACTOR, source="simulator")
    assert result.changes == {"gpu3": {"firmware_version": [old, "96.00.74.00.01"]}}
    gpu.refresh_from_db()
    assert gpu.firmware_version == "96.00.74.00.01"
    event = AuditEvent.objects.filter(verb="fleet.server.inventory_synced", target_id=str(server.pk)).latest("id")
    assert event.after["changes"] == {"gpu3": {"firmware_version": [old, "96.00.74.00.01"]}}
    assert event.after["source"] == "simulator"


@pytest.mark.parametrize(
    "change",
    [{"hostname": "someone-else"}, {"platform": "hgx-a100-8", "variant": "oem"}, {"variant": "oem"}],
    ids=["hostname", "platform", "variant"],
)
def test_sync_refuses_another_machine(db, agent, change):
    server = _register(agent).server
    rows, events = _rows(server), AuditEvent.objects.count()
    inventory = dataclasses.replace(agent.get_inventory(), **change)
    with pytest.raises(ValidationError):
        server_sync_inventory(server=server, inventory=inventory, actor=ACTOR)
    assert _rows(server) == rows
    assert AuditEvent.objects.count() == events


def test_gpu_lost_to_xid_79_is_reported_missing_and_kept(db, agent):
    server = _register(agent).server
    agent.sim_admin().inject_xid(5, 79)
    inventory = agent.get_inventory()
    assert 5 not in {g.module_id for g in inventory.gpus}
    result = server_sync_inventory(server=server, inventory=inventory, actor=ACTOR)
    assert result.missing_modules == (5,)
    gpu = server.gpus.get(module_id=5)  # the row stays: leases and history point at it
    assert gpu.state == "free"  # states are for the GPU state machine, not for the sync


@pytest.mark.parametrize(("platform", "variant"), ALL_VARIANTS, ids=[f"{p}-{v}" for p, v in ALL_VARIANTS])
def test_every_platform_registers_with_its_board_map(db, platform, variant):
    spec = get_platform(platform)
    board = spec.variant(variant)
    with SimFleet(1, platform=platform, variant=variant, insecure=True, name_prefix=f"sim-{platform}") as fleet:
        endpoint = next(iter(fleet.endpoints.values()))
        with AgentClient(endpoint.address, node=endpoint.node, insecure=True) as client:
            result = _register(client)
    server = result.server
    assert (server.platform, server.variant) == (platform, variant)
    mapping = dict(server.gpus.values_list("module_id", "pci_address"))
    assert mapping == {m: f"0000:{bdf}" for m, bdf in board.module_to_bdf().items()}
    assert server.gpus.count() == spec.gpu_count
    assert server.nvswitches.count() == spec.nvswitch_count
    assert sorted(server.nvswitches.values_list("pci_address", flat=True)) == sorted(
        f"0000:{bdf}" for bdf in board.switch_bdfs
    )
    assert set(server.partitions.values_list("partition_id", flat=True)) == {p.id for p in spec.partitions}


def test_a_server_registered_from_its_inventory_is_placeable_at_once(db, agent, settings, monkeypatch):
    from fleet import placement_live
    from fleet.placement_live import live_index
    from fleet.snapshot import Placement, Request

    # Neither age nor a refusal makes the index read the fleet again: only the registration can tell it.
    settings.PLACEMENT_INDEX_MAX_AGE_S = 3600
    monkeypatch.setattr(placement_live, "NOFIT_RELOAD_AFTER_S", 3600.0)
    live_index.refresh()
    assert not isinstance(live_index.choose(Request(gpu_count=8)), Placement)
    server = _register(agent).server
    decision = live_index.choose(Request(gpu_count=8))
    assert decision.placement.server_id == server.pk


NOT_ISOLATED = [
    ("supermicro-nic-shared", 1, "not alone in its IOMMU group", 2),  # placement's 4-GPU choice: 5-8
    ("supermicro-host-driver", 6, "bound to the host's nvidia driver", 1),  # 1-4
]


@pytest.mark.parametrize(("variant", "module", "why", "half"), NOT_ISOLATED, ids=[v[0] for v in NOT_ISOLATED])
def test_a_gpu_that_is_not_isolated_is_recorded_and_never_placed(db, variant, module, why, half):
    from fleet.placement import place
    from fleet.selectors import placement_fleet
    from fleet.snapshot import NoFit, Request

    with SimFleet(1, platform="hgx-h100-8", variant=variant, insecure=True) as fleet:
        endpoint = next(iter(fleet.endpoints.values()))
        with AgentClient(endpoint.address, node=endpoint.node, insecure=True) as client:
            server = _register(client).server
            gpu = server.gpus.get(module_id=module)
            assert not gpu.isolated and why in gpu.isolation_reason
            assert set(server.gpus.exclude(pk=gpu.pk).values_list("isolated", "isolation_reason")) == {(True, "")}
            event = AuditEvent.objects.filter(verb="fleet.server.inventory_synced").latest("id")
            assert event.after["changes"][f"gpu{module}"]["isolated"] == [True, False]

            [snapshot] = placement_fleet().servers
            assert snapshot.gpus[module].state == "free" and not snapshot.gpus[module].healthy
            assert isinstance(place(placement_fleet().servers, Request(gpu_count=8)), NoFit)
            assert place(placement_fleet().servers, Request(gpu_count=4)).partition_id == half
            for size in (1, 2, 4):
                for policy in ("bestfit", "firstfit"):
                    chosen = place(placement_fleet().servers, Request(gpu_count=size), policy)
                    assert module not in chosen.gpu_module_ids

            if variant == "supermicro-host-driver":
                # An operator binds it to vfio-pci through the agent; the next sync records it isolated.
                client.bind_vfio(gpu.pci_address)
                result = server_sync_inventory(server=server, inventory=client.get_inventory(), actor=ACTOR)
                reason = gpu.isolation_reason
                assert result.changes == {f"gpu{module}": {"isolated": [False, True], "isolation_reason": [reason, ""]}}
                gpu.refresh_from_db()
                assert gpu.isolated and gpu.isolation_reason == ""
                assert place(placement_fleet().servers, Request(gpu_count=8)).gpu_module_ids == tuple(range(1, 9))
