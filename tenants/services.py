"""Tenant and lease services: onboarding, requests, placement with reservation, release, failure.

Placement itself is the pure `fleet.placement`; here it is fed a database snapshot and its choice
is reserved in one transaction with row locks (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL),
with the partial unique constraint on LeaseGpu as the last line of defence (invariant 1).
"""

from __future__ import annotations

import logging
import random
import time

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Sum

from console.audit import Actor, audit_record
from console.errors import Conflict
from fleet import dispatch
from fleet import services as fleet_services
from fleet.models import Gpu, Partition
from fleet.placement import FreeBlockIndex
from fleet.selectors import placement_snapshot
from fleet.snapshot import NoFit, Request
from fleet.states import GpuState
from hardware.exceptions import InvalidArgument
from hardware.oci import parse_image_reference
from tenants.models import Lease, LeaseGpu, Tenant
from tenants.states import (
    LEASE_HOLDS_GPUS,
    LEASE_MACHINE,
    LEASE_TENANT_OWNS,
    LEASE_UNFINISHED,
    TENANT_MACHINE,
    LeaseState,
    TenantState,
)
from tenants.validators import validate_gpu_count, validate_tenant_name

log = logging.getLogger(__name__)
L, T = LeaseState, TenantState
PLACEMENT_ATTEMPTS = 25
# Servers a placement decision reads: the fullest that can take the request (see placement_snapshot).
SNAPSHOT_SERVERS = 16
CHOICES_PER_SNAPSHOT = 8  # lock attempts on one snapshot before reading the fleet again
DEFAULT_GPU_QUOTA = 8


class QuotaExceeded(Conflict):
    """The tenant would hold more GPUs than its quota."""


# ----------------------------------------------------------------------------- tenants
def tenant_ensure(*, name: str, actor: Actor, display_name: str = "") -> Tenant:
    """The tenant by name; an unknown tenant is created (pending) and its tenancy provisioned."""
    tenant = Tenant.objects.filter(name=name).first()
    if tenant is not None:
        return tenant
    tenant = Tenant(name=name, display_name=display_name or name, gpu_quota=DEFAULT_GPU_QUOTA)
    tenant.full_clean()
    try:
        with transaction.atomic():
            tenant.save()
            audit_record(actor=actor, verb="tenants.tenant.created", target=tenant, message="first request")
    except IntegrityError:  # created concurrently by another request
        return Tenant.objects.get(name=name)
    dispatch.on_commit("tenancy_provision", tenant.pk)
    return tenant


def tenancy_provision(*, tenant_id: int, actor: Actor, cluster) -> Tenant:
    """Namespace, network policy and Tenancy resource (idempotent); then place the waiting leases."""
    tenant = Tenant.objects.get(pk=tenant_id)
    if tenant.state in (T.PENDING, T.FAILED):
        TENANT_MACHINE.transition(tenant, T.PROVISIONING, actor=actor)
    try:
        status = cluster.ensure_tenancy(tenant.name)
    except Exception as exc:
        if getattr(exc, "retryable", False):
            Tenant.objects.filter(pk=tenant.pk).update(failure_reason=f"retrying: {exc}")
            raise
        TENANT_MACHINE.transition(tenant, T.FAILED, actor=actor, fields={"failure_reason": str(exc)})
        return tenant
    if getattr(status, "ready", True):
        TENANT_MACHINE.transition(tenant, T.READY, actor=actor, fields={"failure_reason": ""})
        dispatch.on_commit("leases_place_pending", tenant.pk)
    return tenant


def tenancy_failed(*, tenant_id: int, actor: Actor, reason: str) -> None:
    tenant = Tenant.objects.get(pk=tenant_id)
    if tenant.state == T.PROVISIONING:
        TENANT_MACHINE.transition(tenant, T.FAILED, actor=actor, fields={"failure_reason": reason})
        Lease.objects.filter(tenant=tenant, state=L.PENDING).update(pending_reason=f"tenancy failed: {reason}")


# ----------------------------------------------------------------------------- leases
def lease_request(
    *, tenant_name: str, image: str, gpu_count: int, actor: Actor, workload_seconds: int | None = None
) -> Lease:
    """Validate, check quota, record the lease (pending) and try to place it at once.

    An unknown tenant is onboarded first; its lease waits in `pending` until the tenancy is ready.
    """
    _validate_request(tenant_name=tenant_name, image=image, gpu_count=gpu_count)
    recorded = _lease_record(tenant_name=tenant_name, image=image, gpu_count=gpu_count, actor=actor,
                             workload_seconds=workload_seconds)
    if recorded is None:  # an unknown tenant: onboard it, then record the lease
        tenant_ensure(name=tenant_name, actor=actor)
        recorded = _lease_record(tenant_name=tenant_name, image=image, gpu_count=gpu_count, actor=actor,
                                 workload_seconds=workload_seconds)
        if recorded is None:
            raise Conflict(f"tenant {tenant_name} was removed while the request was recorded")
    lease, tenant, older_pending = recorded
    # FIFO: `older_pending` was read under the tenant's lock, so False stays False (no older lease can
    # appear); True is re-checked now, as those leases may have been placed meanwhile.
    if tenant.state == T.READY and not (older_pending and _older_pending(lease)):
        lease_try_place(lease_id=lease.pk, actor=actor)
    lease.refresh_from_db()
    return lease


def _lease_record(
    *, tenant_name: str, image: str, gpu_count: int, actor: Actor, workload_seconds: int | None
) -> tuple[Lease, Tenant, bool] | None:
    """Lock the tenant, check quota, save the pending lease and its audit event in one transaction.
    Returns (lease, tenant, whether the tenant had older pending leases), or None for an unknown tenant."""
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().filter(name=tenant_name).first()
        if tenant is None:
            return None
        if tenant.state == T.DELETING:
            raise Conflict(f"tenant {tenant.name} is being deleted")
        held = 0
        older_pending = False
        for state, count in Lease.objects.filter(tenant=tenant, state__in=LEASE_UNFINISHED).values_list(
            "state"
        ).annotate(n=Sum("gpu_count")).order_by():
            held += count
            older_pending |= state == L.PENDING
        lease = Lease(tenant=tenant, image=image, gpu_count=gpu_count, workload_seconds=workload_seconds)
        # The tenant row is locked above, so its existence needs no query; the model's constraints are
        # the DB-enforced partition uniqueness (no partition yet) and gpu_count ≥ 1, which
        # validate_gpu_count already checks.
        lease.full_clean(exclude=["tenant"], validate_constraints=False)
        if held + gpu_count > tenant.gpu_quota:
            raise QuotaExceeded(
                f"tenant {tenant.name} holds or waits for {held} GPUs; {gpu_count} more exceeds its quota "
                f"of {tenant.gpu_quota}"
            )
        if tenant.state != T.READY:
            lease.pending_reason = "waiting for the tenancy to be ready"
        lease.save()
        audit_record(actor=actor, verb="tenants.lease.requested", target=lease, parent=tenant,
                     after={"gpu_count": gpu_count, "image": image})
    return lease, tenant, older_pending


def _validate_request(*, tenant_name: str, image: str, gpu_count: int) -> None:
    """Refuse bad input before anything is written (an unknown tenant is created only for a valid request)."""
    errors: dict[str, list[str]] = {}
    for field, check in (("tenant", lambda: validate_tenant_name(tenant_name)),
                         ("gpu_count", lambda: validate_gpu_count(gpu_count))):
        try:
            check()
        except ValidationError as exc:
            errors[field] = exc.messages
    try:
        parse_image_reference(image)
    except InvalidArgument as exc:
        errors["image"] = [str(exc)]
    if errors:
        raise ValidationError(errors)


def _older_pending(lease: Lease) -> bool:
    """Per-tenant FIFO: a lease waits behind its tenant's older pending leases."""
    return Lease.objects.filter(tenant_id=lease.tenant_id, state=L.PENDING, pk__lt=lease.pk).exists()


def lease_try_place(*, lease_id: int, actor: Actor) -> bool:
    """Place a pending lease and reserve its partition's GPUs. False (with the reason recorded) when
    nothing fits now; the lease then waits and is retried when capacity frees."""
    excluded: set[int] = set()
    for attempt in range(PLACEMENT_ATTEMPTS):
        outcome = _place_once(lease_id, actor, excluded)
        if outcome is True:
            return True
        if outcome is False:
            if not excluded:
                return False
            # Servers skipped as locked were only busy with another reservation: look again.
            excluded.clear()
        time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    return False


def _place_once(lease_id: int, actor: Actor, excluded: set[int]) -> bool | None:
    """One attempt; None means "lost a race on that server, try again without it"."""
    try:
        with transaction.atomic():
            lease = Lease.objects.select_for_update().select_related("tenant").get(pk=lease_id)
            if lease.state != L.PENDING:
                return lease.state in LEASE_HOLDS_GPUS
            if lease.tenant.state != T.READY:
                return False
            request = Request(gpu_count=lease.gpu_count, tenant=lease.tenant.name,
                              exclude_servers=frozenset(excluded))
            snapshot = placement_snapshot(gpu_count=lease.gpu_count, exclude=excluded, limit=SNAPSHOT_SERVERS)
            index = FreeBlockIndex(snapshot) if snapshot else None
            choice = (
                index.place(request)
                if index is not None
                else NoFit(f"no {lease.gpu_count}-GPU partition free: no server has {lease.gpu_count} free GPUs")
            )
            if isinstance(choice, NoFit):
                if lease.pending_reason != choice.reason:
                    Lease.objects.filter(pk=lease.pk).update(pending_reason=choice.reason)
                return False
            for _ in range(CHOICES_PER_SNAPSHOT):
                gpus = list(
                    Gpu.objects.select_for_update(skip_locked=True).filter(
                        server_id=choice.server_id, module_id__in=choice.gpu_module_ids, state=GpuState.FREE
                    )
                )
                if len(gpus) == len(choice.gpu_module_ids):
                    break
                excluded.add(choice.server_id)
                if gpus:  # some are locked by us now: give them back with the transaction
                    return None
                # Nothing was locked: another request took (or is taking) that partition. Under
                # contention every request makes the same best-fit choice, so take the next one from
                # the same snapshot rather than reading the fleet again; the lock query re-checks it.
                choice = index.place(
                    Request(gpu_count=lease.gpu_count, tenant=lease.tenant.name, exclude_servers=frozenset(excluded))
                )
                if isinstance(choice, NoFit):
                    return None
            else:
                return None
            partition = Partition.objects.get(server_id=choice.server_id, partition_id=choice.partition_id)
            fleet_services.gpus_reserve(gpus=gpus, lease=lease, actor=actor)
            LeaseGpu.objects.bulk_create([LeaseGpu(lease=lease, gpu=g, holds=True) for g in gpus])
            LEASE_MACHINE.transition(
                lease, L.PLACED, actor=actor,
                fields={"server_id": choice.server_id, "partition": partition, "pending_reason": ""},
                message=f"partition {choice.partition_id} ({','.join(map(str, choice.gpu_module_ids))})",
            )
            dispatch.on_commit("lease_advance", lease.pk)
            return True
    except IntegrityError:
        # The database refused a GPU or partition already held: someone else won. Try elsewhere.
        return None


def leases_place_pending(*, actor: Actor, tenant_id: int | None = None) -> int:
    """Retry waiting leases oldest first, per tenant in FIFO order: a tenant's younger lease never
    overtakes its older one. Returns how many were placed."""
    pending = Lease.objects.filter(state=L.PENDING, tenant__state=T.READY)
    if tenant_id is not None:
        pending = pending.filter(tenant_id=tenant_id)
    blocked: set[int] = set()
    placed = 0
    for lease_id, tenant in pending.order_by("created_at", "pk").values_list("pk", "tenant_id"):
        if tenant in blocked:
            continue
        if lease_try_place(lease_id=lease_id, actor=actor):
            placed += 1
        else:
            blocked.add(tenant)
    return placed


def lease_release(*, lease: Lease, actor: Actor) -> Lease:
    """The tenant deletes its container, or the pod ended. Pending leases end at once; leases that
    hold GPUs go to releasing and are cleaned. Idempotent."""
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        if lease.state == L.PENDING:
            LEASE_MACHINE.transition(lease, L.RELEASED, actor=actor, message="cancelled before placement")
            return lease
        if lease.state in LEASE_TENANT_OWNS:
            LEASE_MACHINE.transition(lease, L.RELEASING, actor=actor, fields={"release_requested": True})
            dispatch.on_commit("lease_advance", lease.pk)
    return lease


def lease_fail(*, lease: Lease, actor: Actor, reason: str) -> Lease:
    """Give up on a lease: record why, quarantine its GPUs (they may be dirty), release the hold."""
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        if lease.state in (L.RELEASED, L.FAILED):
            return lease
        fleet_services.gpus_quarantine_for(lease=lease, actor=actor, reason=f"{lease}: {reason}")
        _drop_hold(lease)
        LEASE_MACHINE.transition(lease, L.FAILED, actor=actor, fields={"failure_reason": reason[:2000]},
                                 message=reason)
        dispatch.on_commit("leases_place_pending", None)
    return lease


def lease_finish(*, lease: Lease, actor: Actor) -> Lease:
    """All GPUs are clean (free, drained or quarantined): the lease is released."""
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        fleet_services.gpus_return_to_pool(lease=lease, actor=actor)
        _drop_hold(lease)
        LEASE_MACHINE.transition(lease, L.RELEASED, actor=actor)
        dispatch.on_commit("leases_place_pending", None)
    return lease


def _drop_hold(lease: Lease) -> None:
    LeaseGpu.objects.filter(lease=lease, holds=True).update(holds=False)
    fleet_services.gpus_detach(lease=lease)
