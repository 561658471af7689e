"""Websocket routes (consumers come with the live fleet map)."""

websocket_urlpatterns: list = []
