"""Tenant and lease services: onboarding, requests, placement with reservation, release, failure.

Placement itself is the pure `fleet.placement`; here it is fed a database snapshot and its choice
is reserved in one transaction with row locks (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL),
with the partial unique constraint on fleet.AllocationGpu as the last line of defence (invariant 1).
"""

from __future__ import annotations

import functools
import logging
import random
import time

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from console import correlation, dispatch
from console.audit import Actor, audit_batch, audit_record
from console.db import insert_many
from console.errors import Conflict, NotFound
from fleet.allocations import allocation_abandon, allocation_claim
from fleet.holders import holder_for
from fleet.models import Server
from fleet.placement_live import live_index
from fleet.snapshot import NoFit, Request
from hardware.exceptions import InvalidArgument
from hardware.oci import parse_image_reference
from tenants.constants import LEASE_HOLDER
from tenants.models import Lease, Tenant
from tenants.states import (
    LEASE_HOLDS_GPUS,
    LEASE_MACHINE,
    LEASE_TENANT_OWNS,
    LEASE_TERMINAL,
    LEASE_UNFINISHED,
    TENANT_MACHINE,
    FailureReason,
    LeaseState,
    TenantState,
)
from tenants.validators import validate_gpu_count, validate_tenant_name

log = logging.getLogger(__name__)
L, T = LeaseState, TenantState
PLACEMENT_ATTEMPTS = 25
DEFAULT_GPU_QUOTA = 8


class QuotaExceeded(Conflict):
    """The tenant would hold more GPUs than its quota. Its own code: a client retries it only after
    releasing leases, unlike a conflict that clears by itself."""

    code = "quota_exceeded"


class TenantNotFound(NotFound):
    """No tenant account of that name: accounts are created by admins, never by a request."""


class ClaimLost(Exception):
    """Another transaction holds or took the chosen partition's GPUs. The claim may have locked some
    of them before finding the rest taken, and only ending the transaction releases those locks, so
    the whole attempt is rolled back and made again (the index now knows; it chooses elsewhere)."""


# ----------------------------------------------------------------------------- tenants
def tenant_create(
    *, name: str, actor: Actor, display_name: str = "", gpu_quota: int = DEFAULT_GPU_QUOTA
) -> Tenant:
    """An admin opens a tenant account (pending). Its Kubernetes tenancy is provisioned on its first
    container (`lease_request`), not here. Refuses a name already taken."""
    tenant = Tenant(name=name, display_name=display_name or name, gpu_quota=gpu_quota)
    tenant.full_clean()
    try:
        with transaction.atomic():
            tenant.save()
            audit_record(actor=actor, verb="tenants.tenant.created", target=tenant, message="account opened")
    except IntegrityError as exc:
        raise Conflict(f"tenant {name} exists") from exc
    return tenant


def tenant_ensure(*, name: str, actor: Actor, display_name: str = "") -> Tenant:
    """The tenant by name, its account opened (as `tenant_create`) when there is none yet: for admins'
    tools and tests. Requests never create tenants."""
    tenant = Tenant.objects.filter(name=name).first()
    if tenant is not None:
        return tenant
    try:
        return tenant_create(name=name, actor=actor, display_name=display_name)
    except Conflict:  # opened concurrently
        return Tenant.objects.get(name=name)


def tenant_update(*, tenant: Tenant, actor: Actor, display_name: str, gpu_quota: int) -> Tenant:
    """Change what an operator may change of a tenant (its display name and quota), audited."""
    before = {"display_name": tenant.display_name, "gpu_quota": tenant.gpu_quota}
    after = {"display_name": display_name, "gpu_quota": gpu_quota}
    if before == after:
        return tenant
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        tenant.display_name, tenant.gpu_quota = display_name, gpu_quota
        tenant.full_clean()
        tenant.save(update_fields=["display_name", "gpu_quota"])
        audit_record(actor=actor, verb="tenants.tenant.updated", target=tenant, before=before, after=after)
    return tenant


MAX_GPU_QUOTA = 100_000  # far above any fleet: a typo's extra digits, not a real limit


def tenant_set_quota(*, tenant: Tenant, actor: Actor, gpu_quota: int) -> Tenant:
    """An admin sets how many GPUs the tenant may hold or wait for at once (audited, before/after).
    Lowering it below what the tenant holds ends nothing: its new requests are refused until its use
    falls under the quota. ValidationError for a quota that is not a whole number in 0..MAX_GPU_QUOTA."""
    if isinstance(gpu_quota, bool) or not isinstance(gpu_quota, int) or not 0 <= gpu_quota <= MAX_GPU_QUOTA:
        raise ValidationError({"gpu_quota": [f"a whole number of GPUs from 0 to {MAX_GPU_QUOTA}"]})
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        before = tenant.gpu_quota  # read under the lock: the audit's "before" is what this change replaced
        if before == gpu_quota:
            return tenant
        tenant.gpu_quota = gpu_quota
        tenant.save(update_fields=["gpu_quota"])
        audit_record(actor=actor, verb="tenants.tenant.quota_changed", target=tenant,
                     before={"gpu_quota": before}, after={"gpu_quota": gpu_quota},
                     message=f"GPU quota {before} → {gpu_quota}")
    return tenant


def tenant_delete(*, tenant: Tenant, actor: Actor) -> Tenant:
    """Start deleting a tenant: refused while it has unfinished leases (they must be released and
    their GPUs cleaned first); otherwise the tenant goes to `deleting` (audited), which takes it out
    of placement; the tenants' reconciler owns the tenancy's teardown from there."""
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        running = tenant.leases.filter(state__in=LEASE_UNFINISHED).count()
        if running:
            raise Conflict(f"tenant {tenant.name} has {running} unfinished lease(s): release them first")
        TENANT_MACHINE.transition(tenant, T.DELETING, actor=actor, message="deletion requested", locked=True)
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


def tenancy_drifted(*, tenant: Tenant, actor: Actor, missing: tuple[str, ...]) -> Tenant:
    """Part of a ready tenancy went missing in the cluster: it is not ready (new leases wait) until it
    is provisioned again (level-based: `tenancy_provision` ensures all of it)."""
    reason = f"re-ensuring: {', '.join(missing)} missing in the cluster"
    if TENANT_MACHINE.transition(tenant, T.PROVISIONING, actor=actor, fields={"failure_reason": reason},
                                 message=reason):
        dispatch.on_commit("tenancy_provision", tenant.pk)
    return tenant


def tenancy_failed(*, tenant_id: int, actor: Actor, reason: str) -> None:
    tenant = Tenant.objects.get(pk=tenant_id)
    if tenant.state == T.PROVISIONING:
        TENANT_MACHINE.transition(tenant, T.FAILED, actor=actor, fields={"failure_reason": reason})
        Lease.objects.filter(tenant=tenant, state=L.PENDING).update(pending_reason=f"tenancy failed: {reason}")


# ----------------------------------------------------------------------------- leases
def lease_request(
    *, tenant_name: str, image: str, gpu_count: int, actor: Actor, workload_seconds: int | None = None,
    command: list[str] | None = None, args: list[str] | None = None, env: dict[str, str] | None = None,
    max_pending_seconds: int | None = None, on_record=None,
) -> Lease:
    """Validate, check quota, record the lease and place it, in one transaction: the lease is saved
    `placed` with its GPUs reserved, or `pending` with the reason (it is placed when capacity frees).
    A database-only operation: no agent or cluster is called on this path.

    The tenant account must exist (TenantNotFound otherwise: admins open accounts). A tenant whose
    tenancy was never provisioned gets it provisioned now, on its first container; the lease waits in
    `pending` until the tenancy is ready. `on_record(lease)`, when given, runs in the transaction that
    records the lease (the API binds its idempotency key there).
    The boot time is judged once the lease is placed (`tenants.orchestration`): a VM predicted to
    boot longer than MAX_PREDICTED_BOOT_S on its server ends the lease `failed` ("BootTooSlow: ...")
    before any pod is created, so the request path reads no more rows than before.
    """
    _validate_request(tenant_name=tenant_name, image=image, gpu_count=gpu_count, workload_seconds=workload_seconds)
    extra = {"command": list(command or ()), "args": list(args or ()), "env": dict(env or {}),
             "max_pending_seconds": max_pending_seconds}
    record = functools.partial(_lease_record, tenant_name=tenant_name, image=image, gpu_count=gpu_count,
                               actor=actor, workload_seconds=workload_seconds, on_record=on_record, extra=extra)
    lease = _record_and_place(record, actor)
    if lease is None:
        raise TenantNotFound(f"no tenant {tenant_name}")
    return lease


def _record_and_place(record, actor: Actor) -> Lease | None:
    """`record()` the lease and place it, in one transaction; made again from the start when another
    request took the chosen partition (or the database refused a GPU already held, the last line of
    invariant 1), since the attempt rolled back whole. None for an unknown tenant."""
    for attempt in range(PLACEMENT_ATTEMPTS):
        try:
            with transaction.atomic(), audit_batch():
                lease = record()
                if lease is not None and lease.tenant.state == T.PENDING:
                    dispatch.on_commit("tenancy_provision", lease.tenant_id)  # its first container
                if lease is not None and lease.tenant.state == T.READY and not lease.tenant.waiting:
                    if attempt < PLACEMENT_ATTEMPTS - 1:
                        _place(lease, actor)
                    else:  # lost every race: record it pending, a worker places it
                        dispatch.on_commit("leases_place_pending", lease.tenant_id)
                return lease
        except (ClaimLost, IntegrityError):
            continue
    raise Conflict("the request kept conflicting with concurrent reservations; try again")


def _lease_record(
    *, tenant_name: str, image: str, gpu_count: int, actor: Actor, workload_seconds: int | None, on_record=None,
    extra: dict | None = None,
) -> Lease | None:
    """Lock the tenant, check quota, save the pending lease and its audit event (in the caller's
    transaction). `lease.tenant.waiting` says whether the tenant had older pending leases (per-tenant
    FIFO: read under the tenant's lock, so no older one can appear). None for an unknown tenant."""
    tenant = _tenant_for_request(tenant_name)
    if tenant is None:
        return None
    if tenant.state == T.DELETING:
        raise Conflict(f"tenant {tenant.name} is being deleted")
    # Every field was checked by _validate_request; the rest are defaults (no full_clean on this path).
    lease = Lease(tenant=tenant, image=image, gpu_count=gpu_count, workload_seconds=workload_seconds,
                  correlation_id=actor.correlation_id or correlation.current(), **(extra or {}))
    if tenant.held + gpu_count > tenant.gpu_quota:
        raise QuotaExceeded(
            f"tenant {tenant.name} holds or waits for {tenant.held} GPUs; {gpu_count} more exceeds its quota "
            f"of {tenant.gpu_quota}"
        )
    if tenant.state != T.READY:
        lease.pending_reason = "waiting for the tenancy to be ready"
        lease.conditions = [scheduled_condition(False, "TenancyNotReady", lease.pending_reason)]
    elif tenant.waiting:
        lease.pending_reason = "waiting behind the tenant's older pending leases"
        lease.conditions = [scheduled_condition(False, "Queued", lease.pending_reason)]
    insert_many([lease])
    audit_record(actor=actor, verb="tenants.lease.requested", target=lease, parent=tenant,
                 after={"gpu_count": gpu_count, "image": image})
    if on_record is not None:
        on_record(lease)
    return lease


def _tenant_for_request(name: str) -> Tenant | None:
    """The tenant, row-locked, with `held` (GPUs its unfinished leases hold or wait for) and `waiting`
    (whether it has pending leases). One statement written out, not built by the ORM: it runs on every
    request, and building it cost more than running it."""
    sql = _TENANT_FOR_REQUEST
    if connection.features.has_select_for_update_of:  # SQLite has no row locks: its writers take turns
        sql += " FOR UPDATE OF t"
    return next(iter(Tenant.objects.raw(sql, [*LEASE_UNFINISHED, L.PENDING, name])), None)


def _columns(model, alias: str = "") -> str:
    """The model's columns by name, not `*`: a statement stays prepared in the web workers (settings'
    DATABASE_PREPARED), and PostgreSQL refuses to run a prepared `SELECT *` once a migration has
    added a column ("cached plan must not change result type")."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{field.column}" for field in model._meta.concrete_fields)


_TENANT_FOR_REQUEST = f"""
    SELECT {_columns(Tenant, "t")},
           COALESCE((SELECT SUM(l.gpu_count) FROM {Lease._meta.db_table} l
                     WHERE l.tenant_id = t.id AND l.state IN ({", ".join(["%s"] * len(LEASE_UNFINISHED))})), 0) AS held,
           EXISTS (SELECT 1 FROM {Lease._meta.db_table} l WHERE l.tenant_id = t.id AND l.state = %s) AS waiting
    FROM {Tenant._meta.db_table} t WHERE t.name = %s"""


def _validate_request(
    *, tenant_name: str, image: str, gpu_count: int, workload_seconds: int | None = None
) -> None:
    """Refuse bad input before anything is written. This is the lease's only validation: the record
    is saved without full_clean."""
    errors: dict[str, list[str]] = {}
    image_max = Lease._meta.get_field("image").max_length
    if isinstance(image, str) and len(image) > image_max:
        errors["image"] = [f"image reference longer than {image_max} characters"]
    if workload_seconds is not None and (not isinstance(workload_seconds, int) or workload_seconds < 1):
        errors["workload_seconds"] = ["must be a positive number of seconds"]
    for field, check in (("tenant", lambda: validate_tenant_name(tenant_name)),
                         ("gpu_count", lambda: validate_gpu_count(gpu_count))):
        try:
            check()
        except ValidationError as exc:
            errors[field] = exc.messages
    try:
        parse_image_reference(image)
    except InvalidArgument as exc:
        errors.setdefault("image", [str(exc)])
    if errors:
        raise ValidationError(errors)


def lease_try_place(*, lease_id: int, actor: Actor) -> bool:
    """Place a pending lease and reserve its partition's GPUs. False (with the reason recorded) when
    nothing fits now; the lease then waits and is retried when capacity frees."""
    for attempt in range(PLACEMENT_ATTEMPTS):
        try:
            with transaction.atomic(), audit_batch():
                lease = Lease.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=lease_id)
                if lease.state != L.PENDING:
                    return lease.state in LEASE_HOLDS_GPUS
                if lease.tenant.state != T.READY:
                    return False
                return _place(lease, actor)
        except ClaimLost:
            continue  # the index now knows; try the next best partition at once
        except IntegrityError:
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
    dispatch.on_commit("leases_place_pending", None)  # still contended: a worker tries again
    return False


def _place(lease: Lease, actor: Actor) -> bool:
    """Choose a partition (the live placement index) and claim its GPUs, in the caller's transaction,
    which holds the lease's row. True: placed. False: nothing fits (reason recorded). Raises
    ClaimLost when another transaction holds or took the chosen GPUs."""
    decision = live_index.choose(Request(gpu_count=lease.gpu_count, tenant=lease.tenant.name))
    if isinstance(decision, NoFit):
        if lease.pending_reason != decision.reason:
            lease.pending_reason = decision.reason
            lease.conditions = _with_condition(
                lease.conditions, scheduled_condition(False, FailureReason.INSUFFICIENT_CAPACITY, decision.reason))
            Lease.objects.filter(pk=lease.pk).update(pending_reason=decision.reason, conditions=lease.conditions)
        return False
    choice = decision.placement
    # A stand-in for the server row: its pk and hostname are all the claim (guard, audit text) reads.
    server = Server(pk=choice.server_id, hostname=decision.hostname)
    try:
        allocation = allocation_claim(
            server=server, partition_pk=decision.partition_pk, gpu_ids=decision.gpu_ids,
            holder=holder_for(LEASE_HOLDER, lease.pk), owner=lease.tenant.name, claim_name=str(lease.pk),
            consumer_namespace=lease.tenant.namespace, consumer_name=lease.pod_name_expected, actor=actor,
        )
    except BaseException:
        live_index.abandon(decision)
        raise
    if allocation is None:
        live_index.refused(decision)
        raise ClaimLost(f"partition {choice.partition_id} of server {choice.server_id} was taken")
    live_index.done(decision)
    LEASE_MACHINE.transition(
        lease, L.PLACED, actor=actor, locked=True,
        fields={"allocation": allocation, "pending_reason": "",
                "conditions": _with_condition(lease.conditions, scheduled_condition(
                    True, "Placed", f"{decision.hostname} partition {choice.partition_id}"))},
        message=f"{decision.hostname} partition {choice.partition_id} ({','.join(map(str, choice.gpu_module_ids))})",
    )
    dispatch.on_commit("lease_advance", lease.pk)
    return True


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


def lease_release(*, lease: Lease, actor: Actor, failure_reason: str = "", tenant: Tenant | None = None) -> Lease:
    """The tenant deletes its container, or the pod ended. Pending leases end at once; leases that
    hold GPUs go to releasing and are cleaned. `failure_reason`: the lease ends because of a fault
    (it finishes `failed` after the clean-up). Idempotent. `tenant`: only that tenant's lease
    (Lease.DoesNotExist for another's, nothing written)."""
    with transaction.atomic():
        lease = _lease_locked(lease.pk, tenant)
        if lease.state == L.PENDING:
            LEASE_MACHINE.transition(lease, L.FAILED if failure_reason else L.RELEASED, actor=actor, locked=True,
                                     fields={"failure_reason": failure_reason[:2000]},
                                     message=failure_reason or "cancelled before placement")
            return lease
        if lease.state in LEASE_TENANT_OWNS:
            LEASE_MACHINE.transition(lease, L.RELEASING, actor=actor, message=failure_reason, locked=True,
                                     fields={"release_requested": True, "failure_reason": failure_reason[:2000]})
            dispatch.on_commit("lease_advance", lease.pk)
    return lease


def _lease_locked(pk: int, tenant: Tenant | None) -> Lease:
    """The lease's row, locked; only the tenant's when given (Lease.DoesNotExist otherwise). One
    statement written out: every DELETE runs it, and the ORM spent longer building it than running it."""
    sql, params = _LEASE_LOCKED, [pk]
    if tenant is not None:
        sql, params = sql + " AND tenant_id = %s", [pk, tenant.pk]
    if connection.features.has_select_for_update:  # SQLite has no row locks: its writers take turns
        sql += " FOR UPDATE"
    found = next(iter(Lease.objects.raw(sql, params)), None)
    if found is None:
        raise Lease.DoesNotExist(f"no lease {pk}")
    return found


_LEASE_LOCKED = f"SELECT {_columns(Lease)} FROM {Lease._meta.db_table} WHERE id = %s"


def lease_cancel_overdue(*, actor: Actor, now=None) -> int:
    """Fail the pending leases that waited longer than their `max_pending_seconds` (PendingTimeout).
    Returns how many. Run by tenants' reconciler."""
    now = now or timezone.now()
    failed = 0
    overdue = Lease.objects.filter(state=L.PENDING, max_pending_seconds__isnull=False).values_list(
        "pk", "created_at", "max_pending_seconds")
    for pk, created_at, limit in overdue:
        if (now - created_at).total_seconds() < limit:
            continue
        lease = lease_release(lease=Lease(pk=pk), actor=actor, failure_reason=(
            f"{FailureReason.PENDING_TIMEOUT}: still pending after max_pending_seconds={limit}"))
        failed += lease.state == L.FAILED
    return failed


def scheduled_condition(status: bool, reason: str, message: str) -> dict:
    """The lease's `Scheduled` condition (Kubernetes' PodScheduled): placed on a partition or not, why."""
    return {"type": "Scheduled", "status": "True" if status else "False", "reason": str(reason),
            "message": message[:2000], "last_transition_time": timezone.now().isoformat()}


def _with_condition(conditions: list[dict], new: dict) -> list[dict]:
    """Conditions with `new` in place of its type's (its transition time kept while the status holds)."""
    current = next((c for c in conditions if c.get("type") == new["type"]), None)
    if current and current.get("status") == new["status"]:
        new = {**new, "last_transition_time": current["last_transition_time"]}
    return [*(c for c in conditions if c.get("type") != new["type"]), new]


def lease_fail(*, lease: Lease, actor: Actor, reason: str) -> Lease:
    """Give up on a lease: record why; its allocation is abandoned (GPUs quarantined: they may be
    dirty and only a scrub and a level clears them)."""
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        if lease.state in LEASE_TERMINAL:
            return lease
        if lease.allocation_id:
            allocation_abandon(allocation=lease.allocation, actor=actor, reason=f"{lease}: {reason}")
        LEASE_MACHINE.transition(lease, L.FAILED, actor=actor, fields={"failure_reason": reason[:2000]},
                                 message=reason)
        dispatch.on_commit("leases_place_pending", None)
    return lease


def lease_finish(*, lease: Lease, actor: Actor) -> Lease:
    """Its allocation is returned (every GPU clean, or quarantined): the lease is released, or
    failed when a GPU fault ended it."""
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        if lease.state in LEASE_TERMINAL:
            return lease
        to = L.FAILED if lease.failure_reason else L.RELEASED
        LEASE_MACHINE.transition(lease, to, actor=actor, message=lease.failure_reason)
        dispatch.on_commit("leases_place_pending", None)
    return lease


def lease_set_condition(*, lease: Lease, actor: Actor, type: str, status: bool, reason: str, message: str) -> bool:
    """Record a condition on the lease (Kubernetes style: one per type, its transition time kept
    while its status does not change). True when it changed."""
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        conditions = [c for c in lease.conditions if c.get("type") != type]
        current = next((c for c in lease.conditions if c.get("type") == type), None)
        value = "True" if status else "False"
        if current and (current["status"], current["reason"], current["message"]) == (value, reason, message):
            return False
        since = current["last_transition_time"] if current and current["status"] == value else None
        conditions.append({"type": type, "status": value, "reason": reason, "message": message[:2000],
                           "last_transition_time": since or timezone.now().isoformat()})
        Lease.objects.filter(pk=lease.pk).update(conditions=conditions)
        audit_record(actor=actor, verb="tenants.lease.condition", target=lease, message=f"{type}={value}: {message}",
                     after={"type": type, "status": value, "reason": reason})
    return True
