from django.urls import include, path

from console.ui import actions, events, leases, tenants, views

urlpatterns = [
    path("", views.fleet_overview, name="fleet-overview"),
    path("servers/<int:pk>/", views.server_page, name="server-detail"),
    path("servers/<int:pk>/tile/", views.server_tile, name="server-tile"),
    path("servers/<int:pk>/gpus/<int:module_id>/", views.gpu_card, name="gpu-card"),
    path("operations/<int:pk>/", views.operation_fragment, name="operation"),
    path("actions/<str:action>/preview/", actions.action_preview, name="action-preview"),
    path("actions/confirm/", actions.action_confirm, name="action-confirm"),
    path("leases/", leases.lease_list, name="lease-list"),
    path("leases/<int:pk>/", leases.lease_detail_page, name="lease-detail"),
    path("leases/<int:pk>/release/", leases.lease_release_view, name="lease-release"),
    path("events/", events.events_page, name="events"),
    path("events/correlation/<str:correlation_id>/", events.correlation_page, name="event-correlation"),
    path("simulator/", include("console.ui.simulator")),
    path("healthz", views.healthz, name="healthz"),
    path("tenants/", tenants.tenant_list, name="tenant-list"),
    path("tenants/<slug:name>/", tenants.tenant_page, name="tenant-detail"),
    path("tenants/<slug:name>/quota/", tenants.tenant_quota, name="tenant-quota"),
    path("tenants/<slug:name>/tokens/", tenants.tenant_token_create, name="tenant-token-create"),
    path("tenants/<slug:name>/tokens/<int:token_id>/revoke/", tenants.tenant_token_revoke, name="tenant-token-revoke"),
]
