"""Replay the active partitions to a restarted fabric manager (placeholder until the event-driven
replay lands: the reconciler's backstop only)."""

from __future__ import annotations

from console.audit import Actor, audit_record
from fleet.agents import agent_for
from fleet.models import Server
from fleet.states import PartitionState


def fabric_manager_replay(*, server: Server, actor: Actor) -> list[int]:
    active = sorted(server.partitions.filter(
        state__in=[PartitionState.ACTIVE, PartitionState.ACTIVATING]).values_list("partition_id", flat=True))
    agent_for(server).set_activated_partitions(active)
    audit_record(actor=actor, verb="fleet.server.fabric_manager_replayed", target=server,
                 message=f"re-sent active partitions {active}", after={"partitions": active})
    return active
