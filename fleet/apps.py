from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from console import dispatch, realtime

        dispatch.register({
            "gpu_clean": "fleet.tasks.gpu_clean",
            "node_set_schedulable": "fleet.tasks.node_set_schedulable",
            "allocation_release": "fleet.tasks.allocation_release",
            "lease_book_push": "fleet.tasks.lease_book_push",
            "fleet_reconcile": "fleet.tasks.reconcile",
        })
        realtime.register_collections({
            "fleet.server": "fleet.servers", "fleet.gpu": "fleet.servers", "fleet.partition": "fleet.servers",
            "fleet.allocation": "fleet.servers",
        })
        from fleet.selectors import page_groups_of_events

        realtime.register_group_resolver(page_groups_of_events)
