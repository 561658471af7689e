"""State changes reach Channels groups after commit — on the in-memory layer and on Redis."""

import os

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer

from console import realtime
from console.audit import Actor
from fleet.services import gpu_drain
from tests.factories import make_server

ACTOR = Actor.system("tests")


def _receive_all(layer, channel):
    messages = []

    async def drain():
        import asyncio

        while True:
            try:
                messages.append(await asyncio.wait_for(layer.receive(channel), timeout=0.5))
            except TimeoutError:
                return

    async_to_sync(drain)()
    return messages


def _fan_out_after_commit(settings, layers):
    realtime.flush()  # what earlier tests published (without waiting) must not arrive here
    settings.CHANNEL_LAYERS = layers
    channel_layers.backends.clear()
    layer = get_channel_layer()
    server = make_server()
    gpu = server.gpus.first()
    channel = async_to_sync(layer.new_channel)()
    for group in ("fleet.servers", f"fleet.gpu.{gpu.pk}"):
        async_to_sync(layer.group_add)(group, channel)
    gpu_drain(gpu=gpu, actor=ACTOR)
    realtime.flush()
    # Only this GPU's (the collection group may carry other tests' late events).
    messages = [m for m in _receive_all(layer, channel)
                if any(e["payload"]["target_id"] == str(gpu.pk) for e in m["events"])]
    # One message per group per transaction, each listing the events that concern the group.
    assert [m["type"] for m in messages] == ["events.push", "events.push"]
    events = [e for m in messages for e in m["events"]]
    assert [e["topic"] for e in events] == ["fleet.gpu.drained", "fleet.gpu.drained"]
    assert events[0]["payload"]["target_id"] == str(gpu.pk)
    assert events[0]["payload"]["after"]["state"] == "drained"
    channel_layers.backends.clear()


@pytest.mark.django_db(transaction=True)
def test_in_memory_layer_gets_events_after_commit(settings):
    _fan_out_after_commit(settings, {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}})


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_redis_layer_gets_events_after_commit(settings):
    _fan_out_after_commit(settings, {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                                 "CONFIG": {"hosts": [os.environ["REDIS_URL"]]}}})


@pytest.mark.django_db
def test_nothing_is_published_when_the_transaction_rolls_back(settings, django_capture_on_commit_callbacks):
    server = make_server()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        gpu_drain(gpu=server.gpus.first(), actor=ACTOR)
    # The push is deferred to commit, not sent inside the transaction (the other callback tells the
    # placement index that a state changed).
    assert [c.__qualname__ for c in callbacks if "publish" in c.__qualname__] == [
        "publish_many_on_commit.<locals>.<lambda>"
    ]
