"""AsyncAgentStreams over real gRPC (grpc.aio, loopback port 0) against simulated agents and fleets."""

from __future__ import annotations

import asyncio
import time

import pytest

from hardware.agent_aio import AsyncAgentStreams
from hardware.agent_client import AgentClient
from hardware.exceptions import AgentUnavailable, NotFound, PermissionDenied
from hardware.types import BootPhaseEvent, HealthEvent, HealthKind
from simulator.agent import serve_sim_host
from simulator.clock import SimClock
from simulator.fleet import SimFleet
from simulator.host import SimHost
from tests.simulator.support import FAST, make_pki

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def fleet(pki):
    """Four hosts multiplexed on one mTLS port (per_port_limit below the fleet's size)."""
    with SimFleet(4, tls=pki.node, per_port_limit=2, accel=FAST) as fleet:
        yield fleet


@pytest.fixture
async def streams(pki):
    streams = AsyncAgentStreams(credentials=pki.console, open_timeout=5)
    yield streams
    await streams.close()


async def _take(stream, n: int, timeout: float = 10.0) -> list:
    async def take():
        out = []
        async for item in stream:
            out.append(item)
            if len(out) == n:
                break
        return out

    return await asyncio.wait_for(take(), timeout)


async def test_health_events_arrive_routed_by_node_on_a_multiplexed_port(fleet, streams):
    a, b = list(fleet.hosts)[:2]
    address = fleet.endpoints[a].address
    assert fleet.endpoints[b].address == address
    sa, sb = streams.watch_health(address, a), streams.watch_health(address, b)
    await asyncio.gather(sa.ready(), sb.ready())
    sent_b = [fleet.hosts[b].inject_nvlink(3, 2)]
    sent_a = [fleet.hosts[a].inject_xid(1, 13), fleet.hosts[a].inject_thermal(2, 91.0)]
    got_a, got_b = await asyncio.gather(_take(sa, 2), _take(sb, 1))
    assert all(isinstance(e, HealthEvent) for e in got_a + got_b)
    assert (got_a, got_b) == (sent_a, sent_b)  # the same dataclasses, converted both ways
    assert [(e.hostname, e.kind) for e in got_a] == [(a, HealthKind.XID), (a, HealthKind.TEMPERATURE)]
    assert streams.endpoints == [address]  # one channel for every node behind the endpoint
    sa.cancel()
    sb.cancel()


async def test_boot_phases_arrive_in_order_and_the_stream_ends(fleet, streams):
    name = list(fleet.hosts)[2]
    host = fleet.hosts[name]
    host.start_vm("vm-boot", "pod-boot", [1, 2], guest_ram_gib=64)
    events = [e async for e in streams.watch_boot(fleet.endpoints[name].address, name, "vm-boot")]
    assert all(isinstance(e, BootPhaseEvent) for e in events)
    assert [e.phase for e in events] == [p.phase for p in host.get_vm("vm-boot").phases]
    assert [e.started_at for e in events] == sorted(e.started_at for e in events)
    assert events[-1].final and not any(e.final for e in events[:-1])


async def test_unknown_node_and_vm_map_to_domain_exceptions(fleet, streams):
    address = next(iter(fleet.endpoints.values())).address
    with pytest.raises(NotFound, match="nobody@"):
        await streams.watch_health(address, "nobody").ready()
    with pytest.raises(NotFound, match="no VM"):
        async for _ in streams.watch_boot(address, next(iter(fleet.hosts)), "no-such-vm"):
            pass


async def test_cancelling_the_task_closes_the_stream_on_the_agent(fleet, streams):
    name = list(fleet.hosts)[3]
    hub = fleet.hub
    before = len(hub._subscriptions)
    stream = streams.watch_health(fleet.endpoints[name].address, name)
    await stream.ready()
    assert len(hub._subscriptions) == before + 1

    async def follow():
        async for _ in stream:
            pass

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: len(hub._subscriptions) == before)
    # cancel() ends a stream quietly, and a cancelled stream stays ended.
    other = streams.watch_health(fleet.endpoints[name].address, name)
    await other.ready()
    other.cancel()
    assert [e async for e in other] == []
    await _until(lambda: len(hub._subscriptions) == before)


async def test_a_stream_cancelled_as_soon_as_it_is_ready_leaves_no_subscription_on_the_agent(
    fleet, streams, monkeypatch
):
    """The agent hears the cancel while it is still between telling the client the stream is ready
    and looking for events (a loaded machine stretches that moment; here a pause does): it must
    still close its subscription, not wait for an event on a host that may never send one."""
    from hardware.agent import servicer

    class SlowAfterReady:
        def __init__(self, context):
            self._context = context

        def __getattr__(self, name):
            return getattr(self._context, name)

        def send_initial_metadata(self, metadata):
            self._context.send_initial_metadata(metadata)
            time.sleep(0.3)  # the client reads "ready" and cancels meanwhile

    real_stream = servicer.stream
    monkeypatch.setattr(servicer, "stream", lambda context, *rest: real_stream(SlowAfterReady(context), *rest))
    name = list(fleet.hosts)[2]
    hub = fleet.hub
    before = len(hub._subscriptions)
    stream = streams.watch_health(fleet.endpoints[name].address, name)
    await stream.ready()
    stream.cancel()
    await _until(lambda: len(hub._subscriptions) == before)


async def test_insecure_single_host_agent(pki):
    host = SimHost("node-x", "hgx-h100-8", clock=SimClock(FAST))
    server = serve_sim_host(host, insecure=True)
    try:
        async with AsyncAgentStreams(insecure=True) as streams:
            stream = streams.watch_health(server.address, "node-x")
            await stream.ready()
            host.inject_nvlink(4, 2)
            [event] = await _take(stream, 1)
            assert (event.hostname, event.module_id, event.kind) == ("node-x", 4, HealthKind.NVLINK)
            with pytest.raises(NotFound, match="serves node-x"):
                await streams.watch_health(server.address, "node-y").ready()
    finally:
        server.stop(grace=0)


async def test_mtls_refuses_a_foreign_certificate_and_a_plaintext_client(fleet, pki):
    address = next(iter(fleet.endpoints.values())).address
    node = next(iter(fleet.hosts))
    for kwargs in ({"credentials": pki.foreign_console}, {"insecure": True}):
        async with AsyncAgentStreams(open_timeout=2, **kwargs) as streams:
            with pytest.raises((AgentUnavailable, PermissionDenied)):
                await streams.watch_health(address, node).ready()


def test_plaintext_needs_an_explicit_flag():
    with pytest.raises(ValueError, match="insecure=True"):
        AsyncAgentStreams()


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_streams_of_every_host_on_one_channel_leave_room_for_other_calls(pki):
    """More streams than the old fixed pool (64) and than a 100-stream HTTP/2 limit, on one channel."""
    with SimFleet(120, tls=pki.node, per_port_limit=1, accel=FAST) as fleet:
        address = next(iter(fleet.endpoints.values())).address
        async with AsyncAgentStreams(credentials=pki.console, open_timeout=10) as streams:
            opened = [streams.watch_health(address, name) for name in fleet.hosts]
            await asyncio.gather(*(s.ready() for s in opened))
            assert streams.endpoints == [address]
            name = list(fleet.hosts)[-1]
            with AgentClient(address, credentials=pki.console, node=name, timeout=2, retries=0) as client:
                inventory = await asyncio.to_thread(client.get_inventory)
            assert inventory.hostname == name
            fleet.hosts[name].inject_xid(5, 13)
            [event] = await _take(opened[-1], 1)
            assert (event.hostname, event.module_id) == (name, 5)
            for s in opened:
                s.cancel()
