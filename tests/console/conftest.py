"""Fixtures of the console's tests."""

import pytest
from channels.layers import channel_layers

from console import relay


@pytest.fixture
def memory_layer(settings):
    """Channels' in-memory layer for one test; the relay it started is stopped after."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    relay.stop_all()
    channel_layers.backends.clear()
