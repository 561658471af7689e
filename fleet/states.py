"""States and allowed edges of servers, GPUs and partitions (ARCHITECTURE.md "States")."""

from django.db import models

from console.statemachine import machine


class GpuState(models.TextChoices):
    FREE = "free", "Free"
    RESERVED = "reserved", "Reserved"
    IN_USE = "in_use", "In use"
    SCRUBBING = "scrubbing", "Scrubbing"
    LEVELING = "leveling", "Leveling firmware"
    DRAINING = "draining", "Draining"
    DRAINED = "drained", "Drained"
    QUARANTINED = "quarantined", "Quarantined"
    OFFLINE = "offline", "Offline"


class ServerState(models.TextChoices):
    ACTIVE = "active", "Active"
    CORDONED = "cordoned", "Cordoned"
    DRAINING = "draining", "Draining"
    DRAINED = "drained", "Drained"
    MAINTENANCE = "maintenance", "Maintenance"
    UNREACHABLE = "unreachable", "Unreachable"


class AllocationState(models.TextChoices):
    RESERVED = "reserved", "Reserved"
    ACTIVATING = "activating", "Activating"
    ACTIVE = "active", "Active"
    RELEASING = "releasing", "Releasing"
    CLEANING = "cleaning", "Cleaning"
    RETURNED = "returned", "Returned"
    FAULTED = "faulted", "Faulted"


class PartitionState(models.TextChoices):
    INACTIVE = "inactive", "Inactive"
    ACTIVATING = "activating", "Activating"
    ACTIVE = "active", "Active"
    DEACTIVATING = "deactivating", "Deactivating"
    FAILED = "failed", "Failed"


G = GpuState
GPU_EDGES = {
    (G.FREE, G.RESERVED),  # placement; the only way to a tenant (invariant 2)
    (G.FREE, G.DRAINED),
    (G.FREE, G.QUARANTINED),
    (G.FREE, G.OFFLINE),
    (G.FREE, G.SCRUBBING),  # operator scrub of an idle GPU
    (G.FREE, G.LEVELING),  # operator re-level of an idle GPU
    (G.RESERVED, G.IN_USE),
    (G.RESERVED, G.SCRUBBING),  # lease ended before the VM ran: still scrub, it may have touched it
    (G.RESERVED, G.DRAINING),
    (G.RESERVED, G.QUARANTINED),
    (G.RESERVED, G.OFFLINE),
    (G.IN_USE, G.SCRUBBING),
    (G.IN_USE, G.DRAINING),
    (G.IN_USE, G.QUARANTINED),
    (G.IN_USE, G.OFFLINE),
    (G.DRAINING, G.SCRUBBING),
    (G.DRAINING, G.QUARANTINED),
    (G.DRAINING, G.OFFLINE),
    (G.SCRUBBING, G.LEVELING),
    (G.SCRUBBING, G.QUARANTINED),
    (G.SCRUBBING, G.OFFLINE),
    (G.LEVELING, G.FREE),  # only after a scrub and a level (invariant 2)
    (G.LEVELING, G.DRAINED),
    (G.LEVELING, G.QUARANTINED),
    (G.LEVELING, G.OFFLINE),
    (G.DRAINED, G.FREE),  # undrain: a drained GPU was scrubbed and levelled on its way there
    (G.DRAINED, G.SCRUBBING),
    (G.DRAINED, G.LEVELING),
    (G.DRAINED, G.QUARANTINED),
    (G.DRAINED, G.OFFLINE),
    (G.QUARANTINED, G.SCRUBBING),  # clearing a quarantine goes through scrub and level
    (G.QUARANTINED, G.OFFLINE),
    (G.OFFLINE, G.SCRUBBING),  # back on the bus: scrub and level before anyone gets it
    (G.OFFLINE, G.QUARANTINED),
}
GPU_MACHINE = machine("fleet.gpu", GpuState.values, GPU_EDGES)

GPU_LEASABLE = frozenset({G.FREE})
# States in which a GPU is held by an allocation that has not begun cleaning.
GPU_HELD = frozenset({G.RESERVED, G.IN_USE, G.DRAINING})
GPU_CLEANING = frozenset({G.SCRUBBING, G.LEVELING})
GPU_OUT = frozenset({G.QUARANTINED, G.OFFLINE})

S = ServerState
SERVER_EDGES = {
    (S.ACTIVE, S.CORDONED),
    (S.ACTIVE, S.DRAINING),
    (S.ACTIVE, S.MAINTENANCE),
    (S.ACTIVE, S.UNREACHABLE),
    (S.CORDONED, S.ACTIVE),
    (S.CORDONED, S.DRAINING),
    (S.CORDONED, S.MAINTENANCE),
    (S.CORDONED, S.UNREACHABLE),
    (S.DRAINING, S.DRAINED),
    (S.DRAINING, S.ACTIVE),  # uncordon cancels a drain
    (S.DRAINING, S.CORDONED),  # a cancelled drain stays cordoned: never half-drained and schedulable (6)
    (S.DRAINING, S.UNREACHABLE),
    (S.DRAINED, S.ACTIVE),
    (S.DRAINED, S.MAINTENANCE),
    (S.DRAINED, S.UNREACHABLE),
    (S.MAINTENANCE, S.ACTIVE),
    (S.MAINTENANCE, S.UNREACHABLE),
    (S.UNREACHABLE, S.ACTIVE),
    (S.UNREACHABLE, S.CORDONED),
    (S.UNREACHABLE, S.MAINTENANCE),
}
SERVER_MACHINE = machine("fleet.server", ServerState.values, SERVER_EDGES)

P = PartitionState
PARTITION_EDGES = {
    (P.INACTIVE, P.ACTIVATING),
    (P.ACTIVATING, P.ACTIVE),
    (P.ACTIVATING, P.FAILED),
    (P.ACTIVATING, P.INACTIVE),
    (P.ACTIVE, P.DEACTIVATING),
    (P.DEACTIVATING, P.INACTIVE),
    (P.DEACTIVATING, P.FAILED),
    (P.FAILED, P.INACTIVE),
    (P.FAILED, P.ACTIVATING),
    (P.FAILED, P.DEACTIVATING),
    # The reconciler records what the fabric manager reports when it disagrees with us.
    (P.INACTIVE, P.ACTIVE),
    (P.ACTIVE, P.INACTIVE),
    (P.FAILED, P.ACTIVE),
}
PARTITION_MACHINE = machine("fleet.partition", PartitionState.values, PARTITION_EDGES)
PARTITION_OCCUPYING = frozenset({P.ACTIVATING, P.ACTIVE, P.DEACTIVATING})

A = AllocationState
ALLOCATION_EDGES = {
    (A.RESERVED, A.ACTIVATING),
    (A.ACTIVATING, A.ACTIVE),
    (A.RESERVED, A.RELEASING),  # the holder let go before the partition was activated
    (A.ACTIVATING, A.RELEASING),
    (A.ACTIVE, A.RELEASING),
    (A.RESERVED, A.FAULTED),  # a GPU of it faulted (the holder is told, the Xid catalog decides)
    (A.ACTIVATING, A.FAULTED),
    (A.ACTIVE, A.FAULTED),
    (A.FAULTED, A.RELEASING),
    (A.RELEASING, A.CLEANING),  # partition deactivated; one clean task per GPU
    (A.CLEANING, A.RETURNED),  # every GPU scrubbed and levelled (or quarantined): invariant 2
    # Abandoned (the holder failed): the GPUs are quarantined, so they reach a tenant again only
    # through a scrub and a level (invariant 2).
    (A.RESERVED, A.RETURNED),
    (A.ACTIVATING, A.RETURNED),
    (A.ACTIVE, A.RETURNED),
    (A.FAULTED, A.RETURNED),
    (A.RELEASING, A.RETURNED),
}
ALLOCATION_MACHINE = machine("fleet.allocation", AllocationState.values, ALLOCATION_EDGES)
ALLOCATION_OPEN = frozenset(set(AllocationState.values) - {A.RETURNED})
# The holder may use the GPUs (the device plugin hands them to its pod).
ALLOCATION_USABLE = frozenset({A.RESERVED, A.ACTIVATING, A.ACTIVE})
