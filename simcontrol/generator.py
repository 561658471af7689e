"""The workload generator: leases through the tenants' own request path, released when their
lifetime ends through the tenants' own release path.

It runs as a Celery beat tick (`simcontrol.tasks.generator_tick`, every WORKLOAD_TICK_S) over the
`Simulation` row, which holds its parameters and its place in the schedule (`simcontrol.schedule`,
a pure function of seed and parameters): a restart of any process goes on where it was. Each tick
issues the arrivals that are due (each one recorded, with the cursor moved past it, in the
transaction that records its lease, so a crash never issues one twice) and releases the generated
leases whose lifetime ended, whether or not the generator still runs. Arrivals whose lifetime was
already over when they came due (the beat was down) are skipped, not fired in a burst.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from console.audit import Actor, audit_record
from console.errors import Conflict, DomainError
from console.locks import try_lock
from console.models import Source
from hardware.exceptions import InvalidArgument
from hardware.oci import parse_image_reference
from simcontrol.models import DEFAULT_IMAGE, GeneratedLease, Simulation
from simcontrol.schedule import Arrival, Params, arrivals
from tenants import services as tenant_services
from tenants.models import Lease, Tenant

log = logging.getLogger(__name__)
GENERATOR = Actor.system("workload-generator", source=Source.SIMULATOR)
TENANT_NAMES = ("aurora", "boreal", "cirrus", "drift", "ember", "fable", "glade", "harbor")
TICK_LIMIT = 200  # arrivals or releases one tick handles at most; the next tick takes the rest
# What `make run` starts with on a fresh install: a few leases a minute, mixed sizes, 3 tenants.
DEFAULT_PARAMS = Params(rate_per_min=4.0, sizes=((1, 4.0), (2, 3.0), (4, 2.0), (8, 1.0)),
                        lifetime_min_s=60, lifetime_max_s=300, tenants=3)


class GeneratorMoved(Exception):
    """The generator was stopped or restarted while an arrival was being issued: drop that one."""


@dataclass
class TickResult:
    requested: int = 0
    refused: int = 0
    skipped: int = 0
    released: int = 0
    busy: bool = False  # another tick held the lock


def simulation() -> Simulation:
    return Simulation.objects.get_or_create(pk=1)[0]


def tenant_name(number: int) -> str:
    """The generator's tenant `number` (1-based)."""
    return TENANT_NAMES[number - 1] if number <= len(TENANT_NAMES) else f"gen-{number}"


def _params_dict(sim: Simulation) -> dict:
    return {"seed": sim.seed, "rate_per_min": sim.rate_per_min, "sizes": sim.sizes,
            "lifetime_s": [sim.lifetime_min_s, sim.lifetime_max_s], "tenants": sim.tenants,
            "tenant_quota": sim.tenant_quota, "image": sim.image}


# ----------------------------------------------------------------------------- start / stop
def generator_start(*, params: Params, seed: int, actor: Actor, tenant_quota: int = 32,
                    image: str = DEFAULT_IMAGE) -> Simulation:
    """(Re)start the generator with these parameters; its schedule starts now from arrival 0."""
    if not settings.SIMULATED_FLEET:
        raise Conflict("the workload generator runs only against a simulated fleet (SIMULATED_FLEET)")
    errors = params.errors()
    if not 0 <= seed < 2**31:
        errors["seed"] = "the seed must be a whole number from 0 to 2147483647"
    if not 1 <= tenant_quota <= 10_000:
        errors["tenant_quota"] = "the tenants' GPU quota must be from 1 to 10000"
    try:
        parse_image_reference(image)
    except InvalidArgument as exc:
        errors["image"] = str(exc)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        sim = simulation()
        sim = Simulation.objects.select_for_update().get(pk=sim.pk)
        before = {"running": sim.generator_running, **_params_dict(sim)}
        sim.generator_running = True
        sim.seed, sim.rate_per_min, sim.tenants, sim.tenant_quota, sim.image = (
            seed, params.rate_per_min, params.tenants, tenant_quota, image)
        sim.sizes = [[n, w] for n, w in params.sizes]
        sim.lifetime_min_s, sim.lifetime_max_s = params.lifetime_min_s, params.lifetime_max_s
        sim.started_at, sim.next_index, sim.last_at_s = timezone.now(), 0, 0.0
        sim.requested = sim.refused = sim.skipped = sim.released = 0
        sim.last_error = ""
        sim.save()
        audit_record(actor=actor, verb="simcontrol.generator.started", target=sim, before=before,
                     after={"running": True, **_params_dict(sim)},
                     message=f"workload generator started: {params.rate_per_min:g}/min, seed {seed}")
    return sim


def generator_stop(*, actor: Actor) -> Simulation:
    """No new requests; the leases it made are still released when their lifetime ends."""
    with transaction.atomic():
        sim = Simulation.objects.select_for_update().get(pk=simulation().pk)
        if sim.generator_running:
            sim.generator_running = False
            sim.save(update_fields=["generator_running", "updated_at"])
            audit_record(actor=actor, verb="simcontrol.generator.stopped", target=sim,
                         before={"running": True}, after={"running": False}, message="workload generator stopped")
    return sim


def generator_ensure_running(*, defaults: Params, seed: int, actor: Actor, tenant_quota: int = 32) -> Simulation:
    """`make run`: keep a running generator as it is; start a stopped one with its saved parameters,
    a never-configured one with `defaults`."""
    sim = simulation()
    if sim.generator_running:
        return sim
    if sim.started_at is None:
        return generator_start(params=defaults, seed=seed, actor=actor, tenant_quota=tenant_quota)
    return generator_start(params=sim.params, seed=sim.seed, actor=actor, tenant_quota=sim.tenant_quota,
                           image=sim.image)


# ----------------------------------------------------------------------------- the tick
def generator_tick(*, now: datetime | None = None, actor: Actor = GENERATOR) -> TickResult:
    """Release the generated leases whose lifetime ended, then issue the arrivals that are due."""
    result = TickResult()
    with try_lock("workload-generator") as held:
        if not held:
            result.busy = True
            return result
        now = now or timezone.now()
        _release_due(now, actor, result)
        _issue_due(now, actor, result)
    return result


def _release_due(now: datetime, actor: Actor, result: TickResult) -> None:
    due = (GeneratedLease.objects.filter(released_at__isnull=True, release_at__lte=now)
           .order_by("release_at", "pk").values_list("pk", "lease_id")[:TICK_LIMIT])
    for pk, lease_id in due:
        with transaction.atomic():
            # The tenant deleting its container: the same service the API's DELETE calls.
            tenant_services.lease_release(lease=Lease(pk=lease_id), actor=actor)
            GeneratedLease.objects.filter(pk=pk).update(released_at=now)
            Simulation.objects.filter(pk=1).update(released=F("released") + 1)
        result.released += 1


def _issue_due(now: datetime, actor: Actor, result: TickResult) -> None:
    sim = simulation()
    if not sim.generator_running or sim.started_at is None:
        return
    for arrival in arrivals(sim.seed, sim.params, start_index=sim.next_index, last_at_s=sim.last_at_s):
        due = sim.started_at + timedelta(seconds=arrival.at_s)
        if due > now or result.requested + result.refused + result.skipped >= TICK_LIMIT:
            return
        try:
            outcome = _issue(sim, arrival, due, now, actor)
        except GeneratorMoved:
            return
        setattr(result, outcome, getattr(result, outcome) + 1)


def _advance(sim: Simulation, arrival: Arrival, counter: str, error: str | None = None) -> None:
    """Move the cursor past `arrival` (in the caller's transaction); refuse if the generator moved."""
    fields = {"next_index": arrival.index + 1, "last_at_s": arrival.at_s, counter: F(counter) + 1}
    if error is not None:
        fields["last_error"] = error[:2000]
    moved = Simulation.objects.filter(pk=sim.pk, generator_running=True, started_at=sim.started_at,
                                      next_index=arrival.index).update(**fields)
    if moved != 1:
        raise GeneratorMoved


def _issue(sim: Simulation, arrival: Arrival, due: datetime, now: datetime, actor: Actor) -> str:
    release_at = due + timedelta(seconds=arrival.lifetime_s)
    if release_at <= now:  # already over: the beat was down when it came due
        with transaction.atomic():
            _advance(sim, arrival, "skipped")
        return "skipped"
    name = tenant_name(arrival.tenant)

    def on_record(lease: Lease) -> None:  # in the transaction that records the lease
        GeneratedLease.objects.create(lease=lease, index=arrival.index, release_at=release_at)
        _advance(sim, arrival, "requested")

    try:
        _ensure_tenant(name, sim.tenant_quota, actor)
        tenant_services.lease_request(tenant_name=name, image=sim.image, gpu_count=arrival.gpu_count, actor=actor,
                                      on_record=on_record)
    except (ValidationError, DomainError) as exc:
        text = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        with transaction.atomic():
            _advance(sim, arrival, "refused",
                     error=f"request {arrival.index} ({arrival.gpu_count} GPUs for {name}) refused: {text}")
        return "refused"
    return "requested"


def _ensure_tenant(name: str, quota: int, actor: Actor) -> Tenant:
    """The tenant account, opened by the admins' service when it does not exist yet."""
    tenant = Tenant.objects.filter(name=name).first()
    if tenant is not None:
        return tenant
    try:
        return tenant_services.tenant_create(name=name, actor=actor, display_name=f"{name} (generated)",
                                             gpu_quota=quota)
    except Conflict:  # opened concurrently
        return Tenant.objects.get(name=name)


def upcoming(sim: Simulation, count: int = 5) -> list[tuple[datetime, Arrival]]:
    """The next arrivals of the running schedule, with when each is due (for the panel)."""
    if not sim.generator_running or sim.started_at is None:
        return []
    it = arrivals(sim.seed, sim.params, start_index=sim.next_index, last_at_s=sim.last_at_s)
    return [(sim.started_at + timedelta(seconds=a.at_s), a) for a in (next(it) for _ in range(count))]
