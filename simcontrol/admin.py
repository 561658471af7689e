"""Read-only admin for inspection: the generator is steered from the simulator panel (audited)."""

from django.contrib import admin

from console.admin import ReadOnlyAdmin
from simcontrol.models import GeneratedLease, Simulation


@admin.register(Simulation)
class SimulationAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "generator_running", "rate_per_min", "seed", "requested", "refused", "released",
                    "clock_acceleration", "updated_at")
    search_fields = ("last_error",)


@admin.register(GeneratedLease)
class GeneratedLeaseAdmin(ReadOnlyAdmin):
    list_display = ("lease", "index", "release_at", "released_at")
    list_filter = ("released_at",)
    search_fields = ("lease__tenant__name",)
    raw_id_fields = ("lease",)
