"""Carry a lease through its life, one idempotent step at a time (level-based, kopf style).

`lease_step` looks at the lease's state and does what that state still needs, then returns; the
Celery task calls it until the lease waits on something outside (the VM boot, the pod ending).
Every step is a real call through `hardware`'s agent client and the cluster adapter, and progress is
stored on the lease, so a crashed worker resumes where it stopped. Only one worker advances a lease
at a time (a named lock per lease).

placed → partitioning   (the lease's allocation was claimed with its placement) — unless the VM is
                        predicted to boot longer than MAX_PREDICTED_BOOT_S on that server: then the
                        lease is released with failure_reason "BootTooSlow: ..." and ends `failed`
partitioning → booting  fleet activates the allocation (partition on the fabric manager, device
                        plugin's book); GpuLease + Kata pod with the partition's GPUs as CDI devices,
                        its start-up timeout the predicted boot with a margin (`boot_limits`)
booting → running       the node watcher follows the agent's WatchBoot stream (not a task): one
                        BootPhase row per phase, `lease_record_boot_event`
running → releasing     the tenant deletes it, the pod ends, or a GPU fault ends it
releasing → scrubbing   delete the pod; fleet releases the allocation (partition deactivated, one
                        clean task per GPU, in parallel)
scrubbing → leveling    level-based: no GPU of the allocation is still being scrubbed
leveling → released     level-based: the allocation is returned (every GPU levelled); finalize the GpuLease

Fleet tells the lease of every allocation change (`fleet.holders`, `tenants.subscriptions`): the
step runs again and reads the allocation. A GPU fault is recorded as the `GpuFault` condition, and
a fatal one ends the lease (`failed` once its GPUs are cleaned).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console.audit import Actor, audit_record
from console.locks import try_lock
from fleet.allocations import allocation_activate, allocation_release
from fleet.boot import server_boot_estimate, server_boot_features
from fleet.cluster import get_cluster
from fleet.models import Gpu
from fleet.states import AllocationState, GpuState
from hardware import kube_constants
from hardware.boot_model import startup_timeout_s
from hardware.types import BootEstimate, BootPhaseEvent
from tenants import constants
from tenants.constants import BOOT_TOO_SLOW, GUEST_RAM_GIB
from tenants.models import BootPhase, Lease
from tenants.selectors import lease_detail
from tenants.services import lease_fail, lease_finish, lease_release, lease_set_condition, lease_try_place
from tenants.states import LEASE_MACHINE, LEASE_TENANT_OWNS, LeaseState

log = logging.getLogger(__name__)
L, A = LeaseState, AllocationState
GPU_FAULT = "GpuFault"
_XID = re.compile(r"\bXid (\d+)")


def pod_name_for(lease: Lease) -> str:
    return lease.pod_name_expected


def lease_step(*, lease_id: int, actor: Actor) -> str:
    """Advance the lease as far as it can go now; returns the state it is left in."""
    with try_lock(f"lease-{lease_id}") as held:
        lease = _lease(lease_id)
        if not held:
            return lease.state
        _faults(lease, actor)
        lease = _lease(lease_id)
        for _ in range(len(L.values)):
            before = lease.state
            handler = _STEPS.get(lease.state)
            if handler is None:
                break
            handler(lease, actor)
            lease = _lease(lease_id)
            if lease.state == before:
                break
        return lease.state


def _pending(lease: Lease, actor: Actor) -> None:
    lease_try_place(lease_id=lease.pk, actor=actor)


@dataclass(frozen=True)
class BootLimits:
    """The configured boot limits (settings override `tenants.constants`)."""

    max_predicted_s: float
    timeout_factor: float
    timeout_extra_s: float

    def pod_timeout_s(self, predicted_s: float) -> int:
        """The pod's start-up timeout for a VM predicted to boot in `predicted_s`."""
        return startup_timeout_s(predicted_s, factor=self.timeout_factor, extra_s=self.timeout_extra_s)


def boot_limits() -> BootLimits:
    """MAX_PREDICTED_BOOT_S, BOOT_TIMEOUT_FACTOR and BOOT_TIMEOUT_EXTRA_S from settings, else
    `tenants.constants`."""
    names = ("MAX_PREDICTED_BOOT_S", "BOOT_TIMEOUT_FACTOR", "BOOT_TIMEOUT_EXTRA_S")
    return BootLimits(*(float(getattr(settings, name, getattr(constants, name))) for name in names))


def predicted_boot(lease: Lease) -> BootEstimate:
    """The model's boot for the lease's VM on its server, from the features fleet recorded."""
    return server_boot_estimate(lease.server, gpus=lease.gpu_count, guest_ram_gib=GUEST_RAM_GIB)


def boot_too_slow_reason(lease: Lease, estimate: BootEstimate, limits: BootLimits) -> str:
    """Why the lease is not started ("" when its predicted boot is within the maximum)."""
    total = estimate.total_seconds
    if total <= limits.max_predicted_s:
        return ""
    f = server_boot_features(lease.server)
    slowest, seconds = max(estimate.phases, key=lambda phase: phase[1])
    return (f"{BOOT_TOO_SLOW}: a {lease.gpu_count}-GPU VM on {lease.server.hostname} is predicted to boot in "
            f"{total / 60:.1f} min, over the maximum of {limits.max_predicted_s / 60:.1f} min "
            f"(slowest phase {slowest}: {seconds / 60:.1f} min; host kernel {f['host_kernel'] or 'unknown'}, "
            f"{f['plug_mode']}-plug, {f['iommu_backend']}, guest kernel {f['guest_kernel']}, {f['init_system']})")


def _placed(lease: Lease, actor: Actor) -> None:
    reason = boot_too_slow_reason(lease, predicted_boot(lease), boot_limits())
    if reason:
        lease_release(lease=lease, actor=actor, failure_reason=reason)
        return
    LEASE_MACHINE.transition(lease, L.PARTITIONING, actor=actor, message="activating NVLink partition")


def _partitioning(lease: Lease, actor: Actor) -> None:
    if lease.release_requested:
        return
    allocation = allocation_activate(allocation=lease.allocation, actor=actor)
    if allocation.state != A.ACTIVE:
        return  # faulted or released meanwhile: _faults and the release path take it from here
    server = allocation.server
    gpus = list(Gpu.objects.filter(allocation_gpus__allocation=allocation).order_by("module_id"))
    cluster = get_cluster()
    pod = pod_name_for(lease)
    # Level-based: the tenancy may have drifted since onboarding; a pod never goes to a missing namespace.
    cluster.ensure_tenancy(lease.tenant.name)
    cluster.create_gpu_lease(
        lease_id=str(lease.pk), tenant=lease.tenant.name, node=server.k8s_node_name,
        gpu_module_ids=[g.module_id for g in gpus], pci_addresses=[g.pci_address for g in gpus], pod=pod,
    )
    estimate = server_boot_estimate(server, gpus=len(gpus), guest_ram_gib=GUEST_RAM_GIB)
    created = cluster.create_lease_pod(
        lease_id=str(lease.pk), tenant=lease.tenant.name, image=lease.image, node=server.k8s_node_name,
        gpu_indexes=[g.module_id for g in gpus], command=[*lease.command, *lease.args], env=lease.env,
        predicted_boot_s=estimate.total_seconds,
        startup_timeout_s=boot_limits().pod_timeout_s(estimate.total_seconds),
    )
    with transaction.atomic():
        _record_predicted_boot(lease, estimate)
        # The node watcher follows the VM's boot from here (fleet.holders.follow_boots).
        LEASE_MACHINE.transition(lease, L.BOOTING, actor=actor, fields={"pod_name": created.name or pod},
                                 message=f"pod {created.name or pod} on {server.k8s_node_name}")


def _record_predicted_boot(lease: Lease, estimate: BootEstimate) -> None:
    """The model's phases as rows with their prediction and no times yet (a phase that never runs
    never gets a start)."""
    for seq, (phase, seconds) in enumerate(estimate.phases):
        BootPhase.objects.update_or_create(
            lease=lease, phase=phase,
            defaults={"seq": seq, "predicted_seconds": seconds, "started_at": None, "ended_at": None,
                      "duration_s": None},
        )


def lease_record_boot_event(*, lease: Lease, event: BootPhaseEvent, actor: Actor) -> bool:
    """Record one event of the VM's boot stream; True once the boot is over (running, or failed).

    Times are the console's wall clock: a phase starts and ends when the console learns it did
    (never before the boot began, never after it ended), so they line up with every other time the
    console shows, whatever the host's clock or the simulator's acceleration. How long the phase
    took is the host's own measure (`duration_s`: real seconds on a host, simulated ones in the
    simulator), the length the timeline draws."""
    if event.final:  # the VM's verdict, not a phase
        lease.refresh_from_db()
        if lease.state != L.BOOTING:
            return True
        if event.ok:
            LEASE_MACHINE.transition(lease, L.RUNNING, actor=actor, message="VM booted, container started")
        else:
            lease_fail(lease=lease, actor=actor, reason=f"VM boot failed: {event.detail}")
        return True
    if not event.phase:
        return False
    now = timezone.now()
    with transaction.atomic():
        row = BootPhase.objects.filter(lease=lease, phase=event.phase).first()
        if row is None:
            row = BootPhase(lease=lease, phase=event.phase, seq=BootPhase.objects.filter(lease=lease).count())
        boundary = "started" if row.started_at is None else ""
        row.detail = event.detail
        row.started_at = row.started_at or now
        if event.ended_at is not None:
            if row.ended_at is None:
                boundary = "ended"
            row.ended_at = row.ended_at or now
            row.duration_s = max((event.ended_at - event.started_at).total_seconds(), 0.0)
        row.save()
        if boundary:
            # A phase boundary is a change the lease page draws (its live timeline follows the audit
            # log); a repeated event of the same boundary writes nothing.
            audit_record(actor=actor, verb=f"tenants.bootphase.{boundary}", target=row, parent=lease,
                         after={"phase": row.phase, "duration_s": row.duration_s},
                         message=f"{row.phase} {boundary}" + (f" after {row.duration_s:.1f} s" if row.duration_s
                                                              is not None else ""))
    return False


def _booting(lease: Lease, actor: Actor) -> None:
    """Nothing to push here: the node watcher moves the lease on when the VM's boot ends."""


def _running(lease: Lease, actor: Actor) -> None:
    """Waits for the tenant or the pod to end the lease."""


def _releasing(lease: Lease, actor: Actor) -> None:
    cluster = get_cluster()
    if lease.pod_name or lease.allocation_id:
        cluster.delete_lease_pod(lease_id=str(lease.pk), tenant=lease.tenant.name)
        if cluster.get_gpu_lease(str(lease.pk)) is not None:
            # Deletion waits on our finalizer, which only goes once the GPUs are levelled.
            cluster.set_gpu_lease_phase(str(lease.pk), kube_constants.GpuLeasePhase.SCRUBBING)
            cluster.delete_gpu_lease(str(lease.pk))
    allocation = allocation_release(allocation=lease.allocation, actor=actor)
    if allocation.state in (A.CLEANING, A.RETURNED):
        LEASE_MACHINE.transition(lease, L.SCRUBBING, actor=actor)


def _scrubbing(lease: Lease, actor: Actor) -> None:
    """Level-based: on to leveling once no GPU of the allocation is still being scrubbed."""
    if not Gpu.objects.filter(allocation_gpus__allocation_id=lease.allocation_id, allocation_gpus__held=True,
                              state=GpuState.SCRUBBING).exists():
        LEASE_MACHINE.transition(lease, L.LEVELING, actor=actor)


def _leveling(lease: Lease, actor: Actor) -> None:
    """Level-based: released once fleet returned the allocation (every GPU levelled or out)."""
    if lease.allocation.state != A.RETURNED:
        return
    cluster = get_cluster()
    if cluster.get_gpu_lease(str(lease.pk)) is not None:
        cluster.set_gpu_lease_phase(str(lease.pk), kube_constants.GpuLeasePhase.LEVELLED)
        cluster.finalize_gpu_lease(str(lease.pk), levelled=True)
    lease_finish(lease=lease, actor=actor)


def _faults(lease: Lease, actor: Actor) -> None:
    """A faulted allocation shows on the lease as the GpuFault condition; a fatal fault ends it."""
    allocation = lease.allocation
    if allocation is None or not allocation.fault_reason:
        return
    xid = _XID.search(allocation.fault_reason)
    lease_set_condition(lease=lease, actor=actor, type=GPU_FAULT, status=True,
                        reason=f"Xid{xid.group(1)}" if xid else "GpuUnhealthy", message=allocation.fault_reason)
    if allocation.fault_fatal and lease.state in LEASE_TENANT_OWNS:
        lease_release(lease=lease, actor=actor, failure_reason=f"{GPU_FAULT}: {allocation.fault_reason}")


def _lease(lease_id: int) -> Lease:
    return lease_detail(lease_id)


_STEPS = {
    L.PENDING: _pending,
    L.PLACED: _placed,
    L.PARTITIONING: _partitioning,
    L.BOOTING: _booting,
    L.RUNNING: _running,
    L.RELEASING: _releasing,
    L.SCRUBBING: _scrubbing,
    L.LEVELING: _leveling,
}
