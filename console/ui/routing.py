"""Websocket routes of the live pages (consumers in console/ui/consumers.py)."""

from django.urls import path

from console.ui import consumers, events

websocket_urlpatterns: list = [
    path("ws/fleet/", consumers.FleetMapConsumer.as_asgi()),
    path("ws/servers/<int:pk>/", consumers.ServerConsumer.as_asgi()),
    path("ws/leases/<int:pk>/", consumers.LeaseConsumer.as_asgi()),
    path("ws/events/", events.EventsConsumer.as_asgi()),
]
