"""Admin for tenants and leases. State fields are read-only: states change only through services."""

from django.contrib import admin

from console.admin import ServiceManagedAdmin
from tenants.models import BootPhase, Lease, Tenant


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "display_name", "state", "gpu_quota", "created_at")
    list_filter = ("state",)
    search_fields = ("name", "display_name")
    readonly_fields = ("state", "failure_reason", "provisioning_at", "ready_at", "failed_at")


class BootPhaseInline(admin.TabularInline):
    model = BootPhase
    extra = 0
    readonly_fields = ("seq", "phase", "started_at", "ended_at", "duration_s", "predicted_seconds", "detail")
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Lease)
class LeaseAdmin(ServiceManagedAdmin):
    list_display = ("__str__", "tenant", "gpu_count", "state", "allocation", "created_at")
    list_filter = ("state", "gpu_count", "tenant")
    search_fields = ("tenant__name", "image", "pod_name", "allocation__server__hostname")
    list_select_related = ("tenant", "allocation")
    readonly_fields = (
        "tenant", "image", "gpu_count", "workload_seconds", "state", "allocation", "pod_name",
        "failure_reason", "conditions", "pending_reason", "release_requested",
        "attempts", "placed_at", "partitioning_at", "booting_at", "running_at", "releasing_at",
        "scrubbing_at", "leveling_at", "released_at", "failed_at",
    )
    inlines = [BootPhaseInline]


@admin.register(BootPhase)
class BootPhaseAdmin(ServiceManagedAdmin):
    list_display = ("lease", "seq", "phase", "started_at", "ended_at", "duration_s")
    search_fields = ("lease__tenant__name", "phase")
    list_select_related = ("lease",)
