"""Carry a lease through its life, one idempotent step at a time (level-based, kopf style).

`lease_step` looks at the lease's state and does what that state still needs, then returns; the
Celery task calls it until the lease waits on something outside (the VM boot, the pod ending).
Every step is a real call through `hardware`'s agent client and the cluster adapter, and progress is
stored on the lease, so a crashed worker resumes where it stopped. Only one worker advances a lease
at a time (a named lock per lease).

placed → partitioning   activate the partition on the fabric manager (agent)
partitioning → booting  GpuLease + Kata pod with the partition's GPUs as CDI devices (cluster)
booting → running       the agent's WatchBoot stream, one BootPhase row per phase
running → releasing     the tenant deletes it or the pod ends (reconciler / pod watch)
releasing → scrubbing   delete the pod, deactivate the partition, restore 1-GPU partitions
scrubbing → leveling    scrub each GPU (reset + clear VRAM)
leveling → released     level each GPU's firmware to the platform's pin; finalize the GpuLease
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from console.audit import Actor
from console.locks import try_lock
from fleet import dispatch
from fleet import services as fleet_services
from fleet.agents import agent_for
from fleet.cluster import get_cluster
from fleet.models import Gpu, Server
from fleet.states import GpuState
from hardware import kube_constants
from hardware.boot_model import estimate_boot
from hardware.types import GpuLeaseBinding
from tenants.models import BootPhase, Lease, LeaseGpu
from tenants.services import lease_fail, lease_finish, lease_try_place
from tenants.states import LEASE_MACHINE, LeaseState

log = logging.getLogger(__name__)
L = LeaseState
# Guest RAM of a lease's VM, as the Kata runtime class sizes it (the simulated cluster uses the same).
GUEST_RAM_GIB = 64


def pod_name_for(lease: Lease) -> str:
    return kube_constants.lease_pod_name(str(lease.pk))


def lease_step(*, lease_id: int, actor: Actor) -> str:
    """Advance the lease as far as it can go now; returns the state it is left in."""
    with try_lock(f"lease-{lease_id}") as held:
        lease = Lease.objects.select_related("tenant", "server", "partition").get(pk=lease_id)
        if not held:
            return lease.state
        for _ in range(len(L.values)):
            before = lease.state
            handler = _STEPS.get(lease.state)
            if handler is None:
                break
            handler(lease, actor)
            lease.refresh_from_db()
            if lease.state == before:
                break
        return lease.state


def _pending(lease: Lease, actor: Actor) -> None:
    lease_try_place(lease_id=lease.pk, actor=actor)


def _placed(lease: Lease, actor: Actor) -> None:
    LEASE_MACHINE.transition(lease, L.PARTITIONING, actor=actor, message="activating NVLink partition")


def _partitioning(lease: Lease, actor: Actor) -> None:
    if lease.release_requested:
        return
    server = lease.server
    fleet_services.partition_activate(server=server, partition_id=lease.partition.partition_id, actor=actor,
                                      parent=lease)
    gpus = list(Gpu.objects.filter(current_lease=lease).order_by("module_id"))
    cluster = get_cluster()
    pod = pod_name_for(lease)
    lease_book_push(server=server)  # the node's device plugin allocates only leased GPUs
    cluster.create_gpu_lease(
        lease_id=str(lease.pk), tenant=lease.tenant.name, node=server.k8s_node_name,
        gpu_module_ids=[g.module_id for g in gpus], pci_addresses=[g.pci_address for g in gpus], pod=pod,
    )
    created = cluster.create_lease_pod(
        lease_id=str(lease.pk), tenant=lease.tenant.name, image=lease.image, node=server.k8s_node_name,
        gpu_indexes=[g.module_id for g in gpus],
    )
    with transaction.atomic():
        fleet_services.gpus_mark_in_use(lease=lease, actor=actor)
        _record_predicted_boot(lease, len(gpus))
        LEASE_MACHINE.transition(lease, L.BOOTING, actor=actor, fields={"pod_name": created.name or pod},
                                 message=f"pod {created.name or pod} on {server.k8s_node_name}")
        dispatch.on_commit("lease_follow_boot", lease.pk)


def _record_predicted_boot(lease: Lease, gpus: int) -> None:
    server = lease.server
    estimate = estimate_boot(
        gpus, platform=server.platform, host_kernel=server.host_kernel, iommu_backend=server.iommu_backend,
        plug_mode=server.plug_mode, hugepages=server.hugepages, guest_ram_gib=GUEST_RAM_GIB,
    )
    now = timezone.now()
    for seq, (phase, seconds) in enumerate(estimate.phases):
        BootPhase.objects.update_or_create(
            lease=lease, phase=phase,
            defaults={"seq": seq, "predicted_seconds": seconds, "started_at": now, "ended_at": None},
        )


def lease_follow_boot(*, lease_id: int, actor: Actor) -> str:
    """Record the VM's boot phases from the agent's stream; `running` when the VM is up.

    One follower per lease: the reconciler re-enqueues long boots, and a second copy just returns."""
    with try_lock(f"lease-{lease_id}-boot") as held:
        lease = Lease.objects.select_related("server", "tenant").get(pk=lease_id)
        if not held or lease.state != L.BOOTING:
            return lease.state
        return _follow_boot(lease, actor)


def _follow_boot(lease: Lease, actor: Actor) -> str:
    seq = BootPhase.objects.filter(lease=lease).count()
    vm_id = kube_constants.vm_id_for_pod(kube_constants.tenant_namespace(lease.tenant.name), lease.pod_name)
    origin = None
    for event in agent_for(lease.server).watch_boot(vm_id):
        # Phases keep the durations the agent reports, anchored at the moment the console started the
        # boot (the stream replays from the VM's start): this absorbs the agent's clock skew and the
        # simulator's accelerated clock.
        origin = origin or event.started_at
        shift = lease.booting_at - origin
        if event.phase and not event.final:  # the final event is the VM's verdict, not a phase
            values = {"started_at": event.started_at + shift, "detail": event.detail,
                      "ended_at": event.ended_at + shift if event.ended_at else None}
            _, created = BootPhase.objects.update_or_create(
                lease=lease, phase=event.phase, defaults=values, create_defaults={**values, "seq": seq},
            )
            seq += created
        if event.final:
            lease.refresh_from_db()
            if lease.state != L.BOOTING:
                return lease.state
            if event.ok:
                LEASE_MACHINE.transition(lease, L.RUNNING, actor=actor, message="VM booted, container started")
                lease_book_push(server=lease.server)
            else:
                lease_fail(lease=lease, actor=actor, reason=f"VM boot failed: {event.detail}")
            break
    lease.refresh_from_db()
    return lease.state


def _booting(lease: Lease, actor: Actor) -> None:
    """Nothing to push here: the boot follower (or the reconciler) moves the lease on."""


def _running(lease: Lease, actor: Actor) -> None:
    """Waits for the tenant or the pod to end the lease."""


def _releasing(lease: Lease, actor: Actor) -> None:
    cluster = get_cluster()
    if lease.pod_name or lease.partition_id:
        cluster.delete_lease_pod(lease_id=str(lease.pk), tenant=lease.tenant.name)
        if cluster.get_gpu_lease(str(lease.pk)) is not None:
            # Deletion waits on our finalizer, which only goes once the GPUs are levelled.
            cluster.set_gpu_lease_phase(str(lease.pk), kube_constants.GpuLeasePhase.SCRUBBING)
            cluster.delete_gpu_lease(str(lease.pk))
    if lease.partition_id:
        fleet_services.partition_release(server=lease.server, partition_id=lease.partition.partition_id,
                                         actor=actor, parent=lease)
    with transaction.atomic():
        fleet_services.gpus_begin_clean(lease=lease, actor=actor)
        LEASE_MACHINE.transition(lease, L.SCRUBBING, actor=actor)
    if lease.server_id:
        lease_book_push(server=lease.server)


def _scrubbing(lease: Lease, actor: Actor) -> None:
    for gpu in Gpu.objects.filter(current_lease=lease, state=GpuState.SCRUBBING).order_by("module_id"):
        fleet_services.gpu_clean(gpu_id=gpu.pk, actor=actor)
    LEASE_MACHINE.transition(lease, L.LEVELING, actor=actor)


def _leveling(lease: Lease, actor: Actor) -> None:
    for gpu in fleet_services.gpus_pending_level(lease=lease):
        fleet_services.gpu_clean(gpu_id=gpu.pk, actor=actor)
    cluster = get_cluster()
    if cluster.get_gpu_lease(str(lease.pk)) is not None:
        cluster.set_gpu_lease_phase(str(lease.pk), kube_constants.GpuLeasePhase.LEVELLED)
        cluster.finalize_gpu_lease(str(lease.pk), levelled=True)
    server = lease.server
    lease_finish(lease=lease, actor=actor)
    if server is not None:
        lease_book_push(server=server)
        fleet_services.server_check_drained(server=server, actor=actor)


# What the node's device plugin may allocate, by lease state: only a lease's own, clean GPUs.
_BOOK_PHASE = {
    L.PLACED: "Reserved", L.PARTITIONING: "Reserved", L.BOOTING: "Booting", L.RUNNING: "Running",
    L.RELEASING: "Releasing", L.SCRUBBING: "Scrubbing", L.LEVELING: "Leveling",
}


def lease_book_push(*, server: Server) -> None:
    """Send the server's agent the complete set of leases on it now (level-based, idempotent)."""
    leases = Lease.objects.filter(server=server, state__in=list(_BOOK_PHASE)).select_related("tenant")
    modules: dict[int, list[int]] = {}
    for lease_id, module_id in LeaseGpu.objects.filter(lease__in=leases, holds=True).values_list(
        "lease_id", "gpu__module_id"
    ):  # one query for the node's book, not one per lease
        modules.setdefault(lease_id, []).append(module_id)
    bindings = []
    for lease in leases:
        bindings.append(GpuLeaseBinding(
            lease_id=str(lease.pk), pod_namespace=kube_constants.tenant_namespace(lease.tenant.name),
            pod_name=lease.pod_name or pod_name_for(lease), module_ids=tuple(sorted(modules.get(lease.pk, ()))),
            phase=_BOOK_PHASE[lease.state],
        ))
    agent_for(server).set_gpu_leases(bindings)


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
