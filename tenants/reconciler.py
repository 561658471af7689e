"""The periodic reconciler: compare desired state (database) with actual state (agents' fabric
managers, the cluster's pods) and repair the difference, so a lost task or a crashed worker never
leaves a GPU stranded. Runs as a singleton (named lock); every repair is a service call, audited
with source `reconciler`. Level-based: running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

from console.audit import Actor
from console.locks import try_lock
from console.models import Operation, Source
from fleet import dispatch
from fleet import services as fleet_services
from fleet.agents import agent_for
from fleet.cluster import get_cluster
from fleet.models import Gpu, Partition, Server
from fleet.states import GPU_HELD_BY_LEASE, GpuState, PartitionState, ServerState
from hardware.cluster import PodPhase
from hardware.exceptions import HardwareError
from tenants import services
from tenants.models import Lease, Tenant
from tenants.orchestration import lease_book_push
from tenants.states import LEASE_HOLDS_GPUS, LeaseState, TenantState

log = logging.getLogger(__name__)
ACTOR = Actor.system("reconciler", source=Source.RECONCILER)
L = LeaseState
STUCK_AFTER = timedelta(seconds=30)
ORPHAN_POD_WINDOW = timedelta(hours=1)
# Leases whose partition must be active on the fabric manager.
PARTITION_NEEDED = (L.PARTITIONING, L.BOOTING, L.RUNNING)


def reconcile_fleet(*, stuck_after: timedelta = STUCK_AFTER) -> dict:
    """One pass over the fleet. Returns counts of what it repaired."""
    with try_lock("reconciler") as held:
        if not held:
            return {"skipped": 1}
        stats: Counter[str] = Counter()
        _agents(stats)
        _pods(stats)
        _stuck_leases(stats, stuck_after)
        _stranded_gpus(stats, stuck_after)
        _tenancies(stats)
        stats["leases_placed"] += services.leases_place_pending(actor=ACTOR)
        for server in Server.objects.filter(state=ServerState.DRAINING):
            stats["servers_drained"] += fleet_services.server_check_drained(server=server, actor=ACTOR)
        return dict(stats)


def _agents(stats: Counter) -> None:
    needed: dict[int, set[int]] = {}
    for server_id, partition_id in Partition.objects.filter(
        leases__state__in=PARTITION_NEEDED, state=PartitionState.ACTIVE
    ).values_list("server_id", "partition_id"):
        needed.setdefault(server_id, set()).add(partition_id)
    for server in Server.objects.exclude(agent_endpoint=""):
        agent = agent_for(server)
        try:
            reported = {p.partition_id: p.active for p in agent.list_partitions()}
        except HardwareError:
            # A restarted fabric manager accepts only the list of what is still active (60 s window).
            active = list(server.partitions.filter(state=PartitionState.ACTIVE).values_list("partition_id", flat=True))
            try:
                agent.set_activated_partitions(active)
                stats["fabric_managers_restored"] += 1
                reported = {p.partition_id: p.active for p in agent.list_partitions()}
            except HardwareError:
                fleet_services.server_mark_reachable(server=server, actor=ACTOR, reachable=False)
                stats["servers_unreachable"] += 1
                continue
        fleet_services.server_mark_reachable(server=server, actor=ACTOR, reachable=True)
        try:
            lease_book_push(server=server)
        except HardwareError as exc:
            log.warning("%s: lease book not pushed: %s", server, exc)
        for partition_id in needed.get(server.pk, ()):
            if not reported.get(partition_id):
                try:
                    agent.activate_partition(partition_id)
                    reported[partition_id] = True
                    stats["partitions_reactivated"] += 1
                except HardwareError as exc:
                    log.warning("%s: cannot re-activate partition %s: %s", server, partition_id, exc)
        stats["partitions_recorded"] += fleet_services.partitions_record_reported(
            server=server, reported=reported, actor=ACTOR
        )


def _pods(stats: Counter) -> None:
    cluster = get_cluster()
    for lease in Lease.objects.filter(state__in=[L.BOOTING, L.RUNNING]).select_related("tenant"):
        try:
            pod = cluster.get_lease_pod(lease_id=str(lease.pk), tenant=lease.tenant.name)
        except HardwareError as exc:
            log.warning("cannot read pod of %s: %s", lease, exc)
            continue
        if pod is None or pod.phase in PodPhase.TERMINAL:
            services.lease_release(lease=lease, actor=ACTOR)
            stats["pods_ended"] += 1
    # A lease that ended without its clean-up (failed, or a crash) may have left its pod and VM behind;
    # the GPUs cannot be scrubbed under a running VM.
    recent = timezone.now() - ORPHAN_POD_WINDOW
    ended = Lease.objects.filter(Q(failed_at__gte=recent) | Q(released_at__gte=recent)).exclude(pod_name="")
    for lease in ended.filter(state__in=[L.FAILED, L.RELEASED]).select_related("tenant"):
        try:
            if cluster.get_lease_pod(lease_id=str(lease.pk), tenant=lease.tenant.name) is not None:
                cluster.delete_lease_pod(lease_id=str(lease.pk), tenant=lease.tenant.name)
                stats["orphan_pods_deleted"] += 1
        except HardwareError as exc:
            log.warning("cannot clean up the pod of %s: %s", lease, exc)


def _stuck_leases(stats: Counter, stuck_after: timedelta) -> None:
    cutoff = timezone.now() - stuck_after
    stale = Q()
    for state in LEASE_HOLDS_GPUS:
        stale |= Q(state=state, **{f"{state}_at__lt": cutoff})
    for lease_id, state in Lease.objects.filter(stale).exclude(state=L.RUNNING).values_list("pk", "state"):
        dispatch.enqueue("lease_follow_boot" if state == L.BOOTING else "lease_advance", lease_id)
        stats["leases_resumed"] += 1


def _stranded_gpus(stats: Counter, stuck_after: timedelta) -> None:
    # Held by no unfinished lease: a crash between steps. Clean them (scrub + level), never free them.
    orphans = Gpu.objects.filter(state__in=GPU_HELD_BY_LEASE).filter(
        Q(current_lease__isnull=True) | ~Q(current_lease__state__in=LEASE_HOLDS_GPUS)
    )
    for gpu in orphans:
        fleet_services.gpus_begin_clean_orphan(gpu=gpu, actor=ACTOR)
        dispatch.enqueue("gpu_clean", gpu.pk, None)
        stats["gpus_orphaned"] += 1
    busy_ops = Operation.objects.filter(status__in=["pending", "running"], target_type="fleet.gpu").values_list(
        "target_id", flat=True
    )
    cutoff = timezone.now() - stuck_after
    idle_cleaning = Gpu.objects.filter(
        state__in=[GpuState.SCRUBBING, GpuState.LEVELING], current_lease__isnull=True
    ).exclude(pk__in=[int(t) for t in busy_ops if t.isdigit()])
    for gpu in idle_cleaning:
        if gpu.leveled_at and gpu.leveled_at > cutoff:
            continue
        dispatch.enqueue("gpu_clean", gpu.pk, None)
        stats["gpus_cleaning_resumed"] += 1


def _tenancies(stats: Counter) -> None:
    for tenant_id in Tenant.objects.filter(state__in=[TenantState.PENDING, TenantState.FAILED]).values_list(
        "pk", flat=True
    ):
        dispatch.enqueue("tenancy_provision", tenant_id)
        stats["tenancies_retried"] += 1
