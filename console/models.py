"""Infrastructure models every app writes through: the audit log and long operator operations."""

from django.conf import settings
from django.db import models

from console.roles import PERMISSIONS


class Source(models.TextChoices):
    WEB = "web", "Web"
    API = "api", "API"
    TASK = "task", "Task"
    RECONCILER = "reconciler", "Reconciler"
    AGENT = "agent", "Agent"
    SIMULATOR = "simulator", "Simulator"
    CLI = "cli", "Command line"


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):  # append-only: no bulk rewrites of history
        raise TypeError("AuditEvent is append-only")

    def delete(self):
        raise TypeError("AuditEvent is append-only")


class AuditEvent(models.Model):
    """One thing that happened: who did what to which object, from where, with before/after.

    Append-only. Written only by services (through console.audit), in the same transaction as the
    change it records. The dotted verb (`fleet.gpu.quarantined`) doubles as the realtime topic.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_text = models.CharField(max_length=150)
    source = models.CharField(max_length=16, choices=Source.choices)
    correlation_id = models.CharField(max_length=64, blank=True)
    verb = models.CharField(max_length=100)
    target_type = models.CharField(max_length=50)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=200)
    parent_type = models.CharField(max_length=50, blank=True)
    parent_id = models.CharField(max_length=64, blank=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    message = models.TextField(blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        # The events page reads keyset pages on the id under each filter (console/events.py): an
        # index per filter that ends in `id` makes a filtered page, however deep, one ordered range scan.
        indexes = [
            models.Index(fields=["target_type", "target_id", "id"], name="audit_target_id"),
            models.Index(fields=["verb", "id"], name="audit_verb_id"),
            # verb prefixes (`fleet.gpu.`): LIKE 'x%' on PostgreSQL needs the pattern operator class
            models.Index(fields=["verb"], name="audit_verb_prefix", opclasses=["varchar_pattern_ops"]),
            models.Index(fields=["correlation_id", "id"], name="audit_correlation_id"),
            models.Index(fields=["actor_text", "id"], name="audit_actor_id"),
            models.Index(fields=["source", "id"], name="audit_source_id"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_text} {self.verb} {self.target_repr}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise TypeError("AuditEvent is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("AuditEvent is append-only")


class Operation(models.Model):
    """A long operator action (drain a server, scrub a GPU) whose progress and log the UI reads."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    UNFINISHED = (Status.PENDING, Status.RUNNING)

    kind = models.CharField(max_length=50)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_text = models.CharField(max_length=150)
    source = models.CharField(max_length=16, choices=Source.choices)
    target_type = models.CharField(max_length=50)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=200)
    progress = models.PositiveSmallIntegerField(default=0)
    log = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # One operator action on several targets (drain three servers) is one operation whose parts are
    # its children: its progress is theirs, it ends when they all have (console.operations).
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]
        permissions = list(PERMISSIONS.items())

    def __str__(self) -> str:
        return f"{self.kind} {self.target_repr} ({self.status})"

    @property
    def done(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELLED)

    def open_part_target_ids(self) -> str:
        """"12,14": the targets of its parts still running (what its Cancel applies to)."""
        return ",".join(self.children.filter(status__in=self.UNFINISHED).order_by("pk")
                        .values_list("target_id", flat=True))
