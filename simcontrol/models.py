"""The simulated fleet as the console steers it: one `Simulation` row and the generator's leases."""

from __future__ import annotations

from django.db import models

from simcontrol.schedule import Params

DEFAULT_SIZES = [[1, 4.0], [2, 3.0], [4, 2.0], [8, 1.0]]
DEFAULT_IMAGE = "registry.example.com/sim/train:1"


def _default_sizes() -> list:
    return [list(s) for s in DEFAULT_SIZES]


class Simulation(models.Model):
    """One row (pk 1): the workload generator's parameters and where its schedule stands, so it goes
    on where it was after a restart; also what the panel's fleet-wide actions (the clock) are
    recorded against in the audit log."""

    generator_running = models.BooleanField(default=False)
    seed = models.PositiveIntegerField(default=1)
    rate_per_min = models.FloatField(default=3.0, help_text="Requests per minute, on average (Poisson)")
    sizes = models.JSONField(default=_default_sizes, help_text="[[GPUs, weight], …]")
    lifetime_min_s = models.PositiveIntegerField(default=60)
    lifetime_max_s = models.PositiveIntegerField(default=300)
    tenants = models.PositiveSmallIntegerField(default=3)
    tenant_quota = models.PositiveIntegerField(default=32, help_text="GPU quota of the tenants it opens")
    image = models.CharField(max_length=512, default=DEFAULT_IMAGE)
    started_at = models.DateTimeField(null=True, blank=True, help_text="Time 0 of the schedule")
    next_index = models.PositiveIntegerField(default=0, help_text="The next arrival of the schedule to issue")
    last_at_s = models.FloatField(default=0.0, help_text="When arrival next_index - 1 was due (s after start)")
    requested = models.PositiveIntegerField(default=0)
    refused = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0, help_text="Arrivals already over when issued (downtime)")
    released = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    clock_acceleration = models.FloatField(null=True, blank=True, help_text="Last set from the panel")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return "simulated fleet"

    @property
    def params(self) -> Params:
        return Params(rate_per_min=self.rate_per_min, sizes=tuple((int(n), float(w)) for n, w in self.sizes),
                      lifetime_min_s=self.lifetime_min_s, lifetime_max_s=self.lifetime_max_s, tenants=self.tenants)


class GeneratedLease(models.Model):
    """A lease the generator requested, and when it releases it (through the tenants' release path)."""

    lease = models.OneToOneField("tenants.Lease", on_delete=models.CASCADE, related_name="generated")
    index = models.PositiveIntegerField(help_text="Its arrival in the schedule")
    release_at = models.DateTimeField(db_index=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["released_at", "release_at"])]

    def __str__(self) -> str:
        return f"generated lease {self.lease_id}"
