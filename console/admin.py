"""Admin for the audit log (read-only: it is append-only) and operations."""

from django.contrib import admin

from console.models import AuditEvent, Operation


class ServiceManagedAdmin(admin.ModelAdmin):
    """Rows that services create and remove (from platform data, agents' inventories, leases):
    the admin shows, searches and edits descriptive fields, but never adds or deletes them, so no
    half-made server or hand-made lease bypasses the services and their audit."""

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(ServiceManagedAdmin):
    """Rows nobody edits by hand either: shown and searched only."""

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor_text", "source", "verb", "target_repr", "message")
    list_filter = ("source", "verb", "target_type")
    search_fields = ("actor_text", "verb", "target_repr", "message", "correlation_id")
    date_hierarchy = "at"


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ("created_at", "kind", "target_repr", "status", "progress", "actor_text")
    list_filter = ("kind", "status")
    search_fields = ("target_repr", "actor_text", "log")
    readonly_fields = [f.name for f in Operation._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # the record of what operators did stays
