"""Admin for tenants and leases. State fields are read-only: states change only through services."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied

from console.admin import ServiceManagedAdmin
from console.audit import Actor
from console.errors import Conflict
from console.statemachine import InvalidTransition
from tenants import services
from tenants.models import ApiToken, BootPhase, Lease, Tenant
from tenants.tokens import api_token_create, api_token_revoke


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    """Tenants are created, changed and deleted through their services (audited; a deletion goes
    through the `deleting` state and its teardown, never a bare DELETE)."""

    list_display = ("name", "display_name", "state", "gpu_quota", "created_at")
    list_filter = ("state",)
    search_fields = ("name", "display_name")
    readonly_fields = ("state", "failure_reason", "provisioning_at", "ready_at", "failed_at")

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return (*fields, "name") if obj is not None else fields

    def save_model(self, request, obj, form, change):
        """Admins open accounts here (tenant_create, audited; the tenancy follows its first container)
        and change them through tenant_update."""
        actor = Actor.for_user(request.user, correlation_id=getattr(request, "correlation_id", ""))
        if change:
            saved = services.tenant_update(tenant=obj, actor=actor, display_name=obj.display_name,
                                           gpu_quota=obj.gpu_quota)
        else:
            saved = services.tenant_create(name=obj.name, display_name=obj.display_name, gpu_quota=obj.gpu_quota,
                                           actor=actor)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj):
        actor = Actor.for_user(request.user, correlation_id=getattr(request, "correlation_id", ""))
        try:
            services.tenant_delete(tenant=obj, actor=actor)
        except (Conflict, InvalidTransition) as exc:
            raise PermissionDenied(str(exc)) from exc
        self.message_user(request, f"{obj.name} is being deleted (state: deleting).", messages.INFO)

    def delete_queryset(self, request, queryset):
        for tenant in queryset:
            self.delete_model(request, tenant)


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


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Admins create tokens here (the token is shown once, in the confirmation message) and revoke them."""

    list_display = ("prefix", "tenant", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("tenant",)
    search_fields = ("prefix", "name", "tenant__name", "user__username")
    list_select_related = ("tenant", "user")
    fields = ("tenant", "user", "name", "prefix", "created_by", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_by", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        return (*self.readonly_fields, "tenant", "user") if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["name"])
            return
        token, raw = api_token_create(actor=Actor.for_user(request.user), tenant=obj.tenant, user=obj.user,
                                      name=obj.name)
        obj.pk, obj.prefix = token.pk, token.prefix
        self.message_user(request, f"Token created. Copy it now, it is not shown again: {raw}", messages.WARNING)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        for token in queryset:
            api_token_revoke(token=token, actor=Actor.for_user(request.user))
        self.message_user(request, f"{queryset.count()} token(s) revoked.")
