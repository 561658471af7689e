"""Tenants, their GPU leases, the GPUs a lease holds, and VM boot phases."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from fleet.models import Gpu
from hardware import kube_constants
from tenants.states import LeaseState, TenantState
from tenants.validators import (
    MAX_TENANT_NAME_LENGTH,
    namespace_for,
    validate_gpu_count,
    validate_tenant_name,
)


class Tenant(models.Model):
    """A customer. Its name becomes the Kubernetes namespace `tenant-<name>`."""

    name = models.CharField(max_length=MAX_TENANT_NAME_LENGTH, unique=True, validators=[validate_tenant_name])
    display_name = models.CharField(max_length=200, blank=True)
    state = models.CharField(
        max_length=16, choices=TenantState.choices, default=TenantState.PENDING, db_index=True
    )
    gpu_quota = models.PositiveIntegerField(default=8, help_text="Most GPUs the tenant may hold at once")
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    provisioning_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def namespace(self) -> str:
        return namespace_for(self.name)


class Lease(models.Model):
    """A tenant's container on N GPUs: one NVLink partition of one server, from request to clean-up."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="leases")
    image = models.CharField(max_length=512)
    gpu_count = models.PositiveSmallIntegerField(validators=[validate_gpu_count])
    state = models.CharField(
        max_length=16, choices=LeaseState.choices, default=LeaseState.PENDING, db_index=True
    )
    allocation = models.OneToOneField(
        "fleet.Allocation", null=True, blank=True, on_delete=models.PROTECT, related_name="lease",
        help_text="Fleet's hold on the lease's GPUs (one partition of one server)",
    )
    pod_name = models.CharField(max_length=253, blank=True)
    failure_reason = models.TextField(blank=True)
    conditions = models.JSONField(
        default=list, blank=True,
        help_text="Conditions as Kubernetes writes them: type, status, reason, message, last_transition_time",
    )
    pending_reason = models.TextField(blank=True, help_text="Why it is still waiting (no fit, tenancy)")
    release_requested = models.BooleanField(default=False)
    correlation_id = models.CharField(
        max_length=64, blank=True, help_text="The request's correlation id: work done outside it (the node "
                                             "watcher) is audited under it too")
    attempts = models.PositiveSmallIntegerField(default=0)
    workload_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Simulated fleet only: how long the container runs"
    )
    command = models.JSONField(default=list, blank=True, help_text="The container's entrypoint (argv list)")
    args = models.JSONField(default=list, blank=True, help_text="Arguments to the entrypoint")
    env = models.JSONField(default=dict, blank=True, help_text="Environment variables of the container")
    max_pending_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Fail with PendingTimeout when still pending this long after the request"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    placed_at = models.DateTimeField(null=True, blank=True)
    partitioning_at = models.DateTimeField(null=True, blank=True)
    booting_at = models.DateTimeField(null=True, blank=True)
    running_at = models.DateTimeField(null=True, blank=True)
    releasing_at = models.DateTimeField(null=True, blank=True)
    scrubbing_at = models.DateTimeField(null=True, blank=True)
    leveling_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="lease_gpu_count_positive"),
        ]
        indexes = [
            models.Index(fields=["tenant", "state", "created_at"]),
            # A tenant's lease list pages newest first: a page reads its rows off this index and stops,
            # however many leases the tenant has kept (without it, all of them were joined and sorted).
            models.Index(fields=["tenant", "-id"], name="lease_tenant_newest_first"),
        ]

    def __str__(self) -> str:
        return f"lease-{self.pk}" if self.pk else "lease (new)"

    @property
    def pod_name_expected(self) -> str:
        """The pod that runs the lease's container (its name follows from the lease's id)."""
        return kube_constants.lease_pod_name(str(self.pk))

    @property
    def server(self):
        """The server of its allocation (None before placement)."""
        return self.allocation.server if self.allocation_id else None

    @property
    def server_id(self) -> int | None:
        return self.allocation.server_id if self.allocation_id else None

    @property
    def partition(self):
        return self.allocation.partition if self.allocation_id else None

    @property
    def gpus(self):
        """The GPUs of its allocation (held now, or last held once it is returned)."""
        return Gpu.objects.filter(allocation_gpus__allocation_id=self.allocation_id).order_by("module_id")

    @property
    def is_finished(self) -> bool:
        return self.state in (LeaseState.RELEASED, LeaseState.FAILED)


class BootPhase(models.Model):
    """One phase of a lease's VM boot, as the node agent streamed it: when (console wall clock) and
    how long (the host's measure), beside the boot model's prediction."""

    lease = models.ForeignKey(Lease, on_delete=models.CASCADE, related_name="boot_phases")
    seq = models.PositiveSmallIntegerField(validators=[MinValueValidator(0)])
    phase = models.CharField(max_length=64)
    started_at = models.DateTimeField(null=True, blank=True, help_text="Console time; empty until it starts")
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_s = models.FloatField(
        null=True, blank=True, help_text="How long it took, as its host measured it (simulated seconds if simulated)"
    )
    detail = models.TextField(blank=True)
    predicted_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["lease", "seq"]
        constraints = [models.UniqueConstraint(fields=["lease", "phase"], name="bootphase_unique_per_lease")]

    def __str__(self) -> str:
        return f"{self.lease} {self.phase}"

    @property
    def seconds(self) -> float | None:
        return self.duration_s


class ApiToken(models.Model):
    """A bearer token of the REST API, bound to one tenant or to one operator (a user with a console
    role). Only a SHA-256 digest is stored, with a short random lookup prefix; the secret is shown
    once, at creation. Revoked tokens stay (the audit log and idempotency keys point at them)."""

    name = models.CharField(max_length=100, blank=True, help_text="What the token is for")
    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens"
    )
    prefix = models.CharField(max_length=16, unique=True, help_text="Public lookup part of the token")
    digest = models.CharField(max_length=64, help_text="SHA-256 of the whole token, hex")
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, help_text="Written at most once a minute")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"
        constraints = [
            models.CheckConstraint(
                condition=(Q(tenant__isnull=False, user__isnull=True) | Q(tenant__isnull=True, user__isnull=False)),
                name="apitoken_one_principal",
            ),
        ]

    def __str__(self) -> str:
        who = f"tenant {self.tenant}" if self.tenant_id else f"user {self.user}"
        return f"{self.prefix}… ({who})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class IdempotencyKey(models.Model):
    """One `Idempotency-Key` a token sent with a create: the request's digest and the lease it made.
    A row without a lease is a request still in flight. Kept at least IDEMPOTENCY_TTL."""

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    request_digest = models.CharField(max_length=64)
    lease = models.ForeignKey(Lease, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["token", "key"], name="idempotency_key_unique_per_token")]

    def __str__(self) -> str:
        return f"{self.token_id}:{self.key}"
