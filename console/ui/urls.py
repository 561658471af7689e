from django.urls import path

from console.ui import actions, events, views

urlpatterns = [
    path("", views.fleet_overview, name="fleet-overview"),
    path("servers/<int:pk>/", views.server_page, name="server-detail"),
    path("servers/<int:pk>/tile/", views.server_tile, name="server-tile"),
    path("servers/<int:pk>/gpus/<int:module_id>/", views.gpu_card, name="gpu-card"),
    path("operations/<int:pk>/", views.operation_fragment, name="operation"),
    path("actions/<str:action>/preview/", actions.action_preview, name="action-preview"),
    path("actions/confirm/", actions.action_confirm, name="action-confirm"),
    path("events/", events.events_page, name="events"),
    path("events/correlation/<str:correlation_id>/", events.correlation_page, name="event-correlation"),
    path("healthz", views.healthz, name="healthz"),
]
