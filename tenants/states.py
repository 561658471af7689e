"""States and allowed edges of tenants and leases (ARCHITECTURE.md "States")."""

from django.db import models

from console.statemachine import machine


class TenantState(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"


class LeaseState(models.TextChoices):
    PENDING = "pending", "Pending"
    PLACED = "placed", "Placed"
    PARTITIONING = "partitioning", "Partitioning"
    BOOTING = "booting", "Booting"
    RUNNING = "running", "Running"
    RELEASING = "releasing", "Releasing"
    SCRUBBING = "scrubbing", "Scrubbing"
    LEVELING = "leveling", "Leveling firmware"
    RELEASED = "released", "Released"
    FAILED = "failed", "Failed"


T = TenantState
TENANT_EDGES = {
    (T.PENDING, T.PROVISIONING),
    (T.PENDING, T.DELETING),
    (T.PROVISIONING, T.READY),
    (T.PROVISIONING, T.FAILED),
    (T.FAILED, T.PROVISIONING),  # onboarding retries
    (T.FAILED, T.DELETING),
    (T.READY, T.PROVISIONING),  # re-ensure after drift
    (T.READY, T.DELETING),
}
TENANT_MACHINE = machine("tenants.tenant", TenantState.values, TENANT_EDGES)

L = LeaseState
LEASE_EDGES = {
    (L.PENDING, L.PLACED),
    (L.PENDING, L.RELEASED),  # cancelled before it got GPUs
    (L.PENDING, L.FAILED),
    (L.PLACED, L.PARTITIONING),
    (L.PLACED, L.RELEASING),
    (L.PLACED, L.FAILED),
    (L.PARTITIONING, L.BOOTING),
    (L.PARTITIONING, L.RELEASING),
    (L.PARTITIONING, L.FAILED),
    (L.BOOTING, L.RUNNING),
    (L.BOOTING, L.RELEASING),
    (L.BOOTING, L.FAILED),
    (L.RUNNING, L.RELEASING),
    (L.RUNNING, L.FAILED),
    (L.RELEASING, L.SCRUBBING),
    (L.RELEASING, L.FAILED),
    (L.SCRUBBING, L.LEVELING),
    (L.SCRUBBING, L.FAILED),
    (L.LEVELING, L.RELEASED),
    (L.LEVELING, L.FAILED),
}
LEASE_MACHINE = machine("tenants.lease", LeaseState.values, LEASE_EDGES)

LEASE_TERMINAL = frozenset({L.RELEASED, L.FAILED})
LEASE_HOLDS_GPUS = frozenset(
    {L.PLACED, L.PARTITIONING, L.BOOTING, L.RUNNING, L.RELEASING, L.SCRUBBING, L.LEVELING}
)
LEASE_UNFINISHED = frozenset(set(LeaseState.values) - LEASE_TERMINAL)
LEASE_TENANT_OWNS = frozenset({L.PLACED, L.PARTITIONING, L.BOOTING, L.RUNNING})


class FailureReason(models.TextChoices):
    """Why a lease failed (or waits), machine-readable: the API's `failure_reason` and condition reasons."""

    INSUFFICIENT_CAPACITY = "InsufficientCapacity", "No partition of that size is free now"
    PENDING_TIMEOUT = "PendingTimeout", "Still pending after max_pending_seconds"
    GPU_FAULT = "GpuFault", "A GPU of the lease faulted"
    IMAGE_PULL_FAILED = "ImagePullFailed", "The container image could not be pulled"
    BOOT_FAILED = "BootFailed", "The VM did not boot"
    AGENT_UNAVAILABLE = "AgentUnavailable", "The server's node agent did not answer"
    INTERNAL = "InternalError", "Another failure (see failure_message)"


_FAILURE_PHRASES = (
    ("imagepull", FailureReason.IMAGE_PULL_FAILED), ("errimage", FailureReason.IMAGE_PULL_FAILED),
    ("image pull", FailureReason.IMAGE_PULL_FAILED), ("agentunavailable", FailureReason.AGENT_UNAVAILABLE),
    ("agent unavailable", FailureReason.AGENT_UNAVAILABLE), ("xid", FailureReason.GPU_FAULT),
    ("boot failed", FailureReason.BOOT_FAILED),
)


def failure_code(text: str) -> str:
    """The machine-readable reason of a lease's failure text (`Code: message`, or known phrases)."""
    if not text:
        return ""
    head = text.split(":", 1)[0].strip()
    if head in FailureReason.values:
        return head
    lowered = text.lower()
    for needle, code in _FAILURE_PHRASES:
        if needle in lowered:
            return code
    return FailureReason.INTERNAL
