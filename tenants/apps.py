from django.apps import AppConfig


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = "Tenants"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from console import dispatch, realtime
        from fleet import holders
        from tenants import subscriptions
        from tenants.constants import LEASE_HOLDER

        dispatch.register({
            "lease_advance": "tenants.tasks.lease_advance",
            "tenancy_provision": "tenants.tasks.tenancy_provision",
            "leases_place_pending": "tenants.tasks.leases_place_pending",
        })
        holders.register(LEASE_HOLDER, subscriptions.allocation_changed)
        holders.on_capacity_freed(subscriptions.capacity_freed)
        holders.follow_boots(LEASE_HOLDER, booting=subscriptions.booting_allocations,
                             record=subscriptions.record_boot_event)
        realtime.register_collections({
            "tenants.lease": "tenants.leases",
            "tenants.tenant": "tenants.tenants",
            "tenants.bootphase": "tenants.leases",
        })
        realtime.register_group_resolver(_lease_page_groups)


def _lease_page_groups(events: list[dict]) -> dict[int, set[str]]:
    """The live relay's resolver for leases: a lease's events (and its boot phases') go to `lease-<id>`."""
    out: dict[int, set[str]] = {}
    for e in events:
        if e["target_type"] == "tenants.lease":
            out[e["id"]] = {f"lease-{e['target_id']}"}
        elif e.get("parent_type") == "tenants.lease":
            out[e["id"]] = {f"lease-{e['parent_id']}"}
    return out
