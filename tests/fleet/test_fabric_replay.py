"""A restarted fabric manager gets the database's active partitions back at once.

One simulated HGX H100 behind a real agent on a loopback port (port 0) at the simulator's default
clock (60x: the fabric manager's 60 s window is one real second), registered from its inventory
into SQLite; partitions activated through fleet.services. The node watcher runs for real (its
asyncio loop on a thread) on the agent's WatchHealth stream.
"""

from __future__ import annotations

import logging
import time

import pytest

from console.audit import Actor
from console.models import AuditEvent
from fleet.agents import agent_for, forget_agents
from fleet.fabric_replay import MISMATCH, REPLAY_FAILED, REPLAYED, fabric_manager_replay
from fleet.models import Partition
from fleet.services import partition_activate
from fleet.states import PartitionState
from simulator.clock import SimClock
from simulator.fabric_manager import RESTART_WINDOW_S, FmState
from simulator.fleet import SimFleet
from tests.support.boots import running_node_watch
from tests.support.simfleet import register
from tests.support.waiting import wait_for

ACTOR = Actor.system("fabric-replay-test", source="agent")
ACTIVE = {1, 5}  # GPUs 1-4 and {5,7}: disjoint
MAX_SIM_S = 30.0  # half the window: the replay must not depend on luck


@pytest.fixture
def served(transactional_db, settings, tasks):
    """(SimHost, Server) at the default clock with partitions 1 and 5 active in both database and
    fabric manager; everything stopped afterwards."""
    settings.AGENT_INSECURE = True
    forget_agents()
    fleet = SimFleet(1, platform="hgx-h100-8", variant="supermicro", insecure=True).start()
    assert fleet.clock.acceleration == SimClock().acceleration == 60.0
    try:
        [server] = register(fleet, actor=ACTOR)
        for partition_id in sorted(ACTIVE):
            partition_activate(server=server, partition_id=partition_id, actor=ACTOR)
        [host] = fleet.hosts.values()
        assert host.fabric_manager.active_ids() == ACTIVE
        yield host, server
    finally:
        forget_agents()
        fleet.stop()


def _db_active(server) -> set[int]:
    return set(Partition.objects.filter(server=server, state=PartitionState.ACTIVE)
               .values_list("partition_id", flat=True))


def test_the_watcher_replays_a_restart_within_the_window(served, caplog):
    host, server = served
    with running_node_watch(actor=ACTOR, rescan_s=0.1, backoff_s=0.05) as watch:
        assert wait_for(lambda: watch.health and watch.health.connected >= 1)  # subscribed
        sim_start, real_start = host.clock.seconds(), time.monotonic()
        agent_for(server).sim_admin().restart_fabric_manager()
        event = wait_for(lambda: AuditEvent.objects.filter(verb=REPLAYED).first())
        real_s, sim_s = time.monotonic() - real_start, host.clock.seconds() - sim_start
    assert event is not None, "no replay"
    print(f"restart -> replay audited: {real_s:.3f} s real, {sim_s:.1f} simulated s")  # the docstring's figure
    assert sim_s < MAX_SIM_S < RESTART_WINDOW_S
    assert host.fabric_manager.state is FmState.RUNNING
    assert host.fabric_manager.active_ids() == ACTIVE  # partitions intact
    assert {p.partition_id for p in agent_for(server).list_partitions() if p.active} == ACTIVE
    assert _db_active(server) == ACTIVE
    assert (event.target_type, event.target_id, event.source) == ("fleet.server", str(server.pk), "agent")
    assert event.after == {"partition_ids": [1, 5]} and "1, 5" in event.message
    assert not AuditEvent.objects.filter(verb__in=[MISMATCH, REPLAY_FAILED]).exists()
    assert "unknown GPU module 0" not in caplog.text


def test_a_mismatch_is_reported_not_repaired(served, caplog):
    host, server = served
    host.clock.set_acceleration(1.0)  # keep the window open while the test plays the other writer
    host.restart_fabric_manager()
    host.fabric_manager.set_activated([3])  # someone else answered first, with another list
    with caplog.at_level(logging.WARNING, logger="fleet.fabric_replay"):
        result = fabric_manager_replay(server=server, actor=ACTOR)
    assert (result.sent, result.partition_ids, result.reported) == (False, (1, 5), (3,))
    assert (result.missing, result.unexpected) == ((1, 5), (3,))
    assert "only accepted after a fabric-manager restart" in result.error
    assert not AuditEvent.objects.filter(verb=REPLAYED).exists()
    event = AuditEvent.objects.get(verb=MISMATCH)
    assert event.after == {"partition_ids": [3], "missing": [1, 5], "unexpected": [3], "sent": False}
    assert "missing there [1, 5], unexpected there [3]" in caplog.text
    assert _db_active(server) == ACTIVE  # no guessing: the rows are left as they are
    assert host.fabric_manager.active_ids() == {3}


def test_a_fabric_manager_that_exited_is_audited_as_a_failed_replay(served):
    host, server = served
    host.restart_fabric_manager()
    host.clock.advance(RESTART_WINDOW_S + 1)  # nobody told it in time: it exited
    result = fabric_manager_replay(server=server, actor=ACTOR)
    assert not result.sent and result.reported is None and "not running" in result.error
    assert AuditEvent.objects.get(verb=REPLAY_FAILED).after["partition_ids"] == [1, 5]
    assert host.fabric_manager.state is FmState.EXITED


def test_activating_rows_are_replayed_too(served):
    host, server = served
    Partition.objects.filter(server=server, partition_id=5).update(state=PartitionState.ACTIVATING)
    host.clock.set_acceleration(1.0)
    host.restart_fabric_manager()
    result = fabric_manager_replay(server=server, actor=ACTOR)
    assert result.sent and result.matches and result.reported == (1, 5)
