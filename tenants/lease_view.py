"""The operator console's read model of one lease (its page) and of the recent leases (the list),
and whether an operator may release a lease now. A fixed number of queries whatever the number of
boot phases, GPUs or events."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from django.db.models import Max, Q
from django.utils import timezone

from console.models import AuditEvent
from fleet.models import Gpu
from hardware import kube_constants
from tenants.boot_timeline import Timeline, build_timeline
from tenants.models import BootPhase, Lease
from tenants.selectors import lease_detail, leases_recent
from tenants.states import LEASE_TENANT_OWNS, LeaseState

L = LeaseState
EVENTS_SHOWN = 100
LEASE_TARGET = "tenants.lease"
# The lease's own audit verbs that are a state: `requested` (its creation), then one per transition.
HISTORY_STATES = frozenset({"requested", *LeaseState.values})


@dataclass
class StateChange:
    state: str
    at: object
    actor: str
    source: str
    message: str
    lasted_s: float | None = None  # until the next change (None for the current state)


@dataclass
class LeasePage:
    lease: Lease
    timeline: Timeline
    history: list[StateChange]
    events: list[AuditEvent]
    gpus: list[Gpu]
    version: int
    refusal: str  # why Release is refused now ("" when it is allowed)
    pod_namespace: str = ""
    pod_name: str = ""
    conditions: list[dict] = field(default_factory=list)

    @property
    def server(self):
        return self.lease.server


def release_refusal(lease: Lease) -> str:
    """Why an operator cannot release `lease` now, in words ("" when the release would do something)."""
    if lease.state == L.PENDING or lease.state in LEASE_TENANT_OWNS:
        return ""
    if lease.state in (L.RELEASING, L.SCRUBBING, L.LEVELING):
        return (f"Lease {lease.pk} is already being released (now {lease.get_state_display().lower()}): its GPUs "
                "are being cleaned; nothing more to do.")
    return f"Lease {lease.pk} has already ended ({lease.get_state_display().lower()}): there is nothing to release."


def _lease_events(lease: Lease) -> Q:
    q = Q(target_type=LEASE_TARGET, target_id=str(lease.pk)) | Q(parent_type=LEASE_TARGET, parent_id=str(lease.pk))
    if lease.correlation_id:
        q |= Q(correlation_id=lease.correlation_id)
    return q


def lease_page(lease_id: int) -> LeasePage:
    """Everything the lease page shows; Lease.DoesNotExist when there is no such lease."""
    lease = lease_detail(lease_id)
    version = AuditEvent.objects.aggregate(v=Max("id"))["v"] or 0
    rows = list(BootPhase.objects.filter(lease=lease).order_by("seq"))
    gpus = list(Gpu.objects.filter(allocation_gpus__allocation_id=lease.allocation_id).order_by("module_id")
                ) if lease.allocation_id else []
    changes = list(AuditEvent.objects.filter(target_type=LEASE_TARGET, target_id=str(lease.pk),
                                             verb__startswith="tenants.lease.").order_by("at", "id")
                   .values_list("verb", "at", "actor_text", "source", "message"))
    history = [StateChange(verb.rsplit(".", 1)[1], at, actor, source, message)
               for verb, at, actor, source, message in changes if verb.rsplit(".", 1)[1] in HISTORY_STATES]
    for current, following in pairwise(history):
        current.lasted_s = (following.at - current.at).total_seconds()
    events = list(AuditEvent.objects.filter(_lease_events(lease)).order_by("-id")[:EVENTS_SHOWN])
    return LeasePage(
        lease=lease, timeline=build_timeline(lease, rows, now=timezone.now()), history=history, events=events,
        gpus=gpus, version=version, refusal=release_refusal(lease),
        pod_namespace=kube_constants.tenant_namespace(lease.tenant.name),
        pod_name=lease.pod_name or (lease.pod_name_expected if lease.allocation_id else ""),
        conditions=list(lease.conditions or []),
    )


def leases_for_list(*, state: str = "", limit: int = 100) -> list[Lease]:
    """The newest leases (optionally in one state) with tenant, server and partition (one query)."""
    leases = leases_recent(limit=limit) if not state else Lease.objects.filter(state=state).select_related(
        "tenant", "allocation__server", "allocation__partition")[:limit]
    return list(leases)
