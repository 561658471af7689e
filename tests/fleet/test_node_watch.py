"""The node watcher (fleet/node_watch.py) for real: its asyncio loop and grpc.aio streams on a
thread of its own, against simulated agents on loopback ports, recording into the database."""

from __future__ import annotations

import time

import pytest

from console.audit import Actor
from console.models import AuditEvent
from fleet.agents import agent_for, forget_agents
from fleet.models import Gpu, Server
from fleet.states import GpuState, ServerState
from simulator.telemetry import TelemetryProcess
from tenants import services
from tenants.models import BootPhase, Lease
from tenants.states import LeaseState
from tests.support.boots import running_node_watch
from tests.support.simfleet import register, sim_fleet_with_cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
ACTOR = Actor.system("node-watch-test", source="api")
IMAGE = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"


@pytest.fixture
def own_fleet(transactional_db, settings, tasks):
    with sim_fleet_with_cluster(settings) as fleet:
        yield fleet


def _gpu(server: Server, module_id: int) -> Gpu:
    return Gpu.objects.get(server=server, module_id=module_id)


def test_health_of_every_server_including_new_ones(own_fleet, tasks):
    first, second = own_fleet.endpoints
    [server] = register(own_fleet, actor=ACTOR, names={first})
    with running_node_watch(rescan_s=0.1) as watch:
        assert wait_for(lambda: watch.health and watch.health.connected == 1)
        agent_for(server).sim_admin().inject_xid(3, 48)
        assert wait_for(lambda: _gpu(server, 3).state == GpuState.SCRUBBING)  # reset on its way to drained
        assert _gpu(server, 3).last_xid == 48

        [later] = register(own_fleet, actor=ACTOR, names={second})
        assert wait_for(lambda: watch.health.connected == 2)
        assert len({key.endpoint for key in watch.health.keys}) >= 1
        agent_for(later).sim_admin().inject_xid(2, 79)
        assert wait_for(lambda: _gpu(later, 2).state == GpuState.OFFLINE)
        assert wait_for(lambda: Server.objects.get(pk=later.pk).state == ServerState.DRAINED)
    assert watch.health.keys == []  # stopped: every stream closed


def test_temperature_telemetry_is_recorded_without_an_audit_row(own_fleet, tasks):
    [server] = register(own_fleet, actor=ACTOR, names={next(iter(own_fleet.endpoints))})
    audited = AuditEvent.objects.count()
    with running_node_watch(rescan_s=0.1) as watch:
        assert wait_for(lambda: watch.health and watch.health.connected == 1)
        host = own_fleet.hosts[server.hostname]
        telemetry = TelemetryProcess([host], seed=5, interval_s=0.05).start()
        try:
            assert wait_for(lambda: not Gpu.objects.filter(server=server, temperature_c=None).exists())
        finally:
            telemetry.stop()

        def last_reported_recorded() -> bool:
            recorded = dict(Gpu.objects.filter(server=server).values_list("module_id", "temperature_c"))
            return all(abs(recorded[m] - g.reported_c) < 0.01 for m, g in host.gpus.items())

        assert wait_for(last_reported_recorded)
    assert AuditEvent.objects.count() == audited  # telemetry is an observation, not an audited change


def test_a_lease_boots_to_running_through_the_watcher_not_a_task(own_fleet, tasks):
    register(own_fleet, actor=ACTOR)
    with running_node_watch(rescan_s=0.1) as watch:
        services.tenant_ensure(name="acme", actor=ACTOR)
        lease = services.lease_request(tenant_name="acme", image=IMAGE, gpu_count=2, actor=ACTOR)
        tasks.run(boots=False)  # the worker's part: partition, GpuLease, pod; nothing follows the boot
        assert "lease_follow_boot" not in [name for name, _ in tasks.ran]
        assert wait_for(lambda: Lease.objects.get(pk=lease.pk).state == LeaseState.RUNNING, timeout=20)
        assert wait_for(lambda: watch.boots.keys == [])  # the boot is over: its stream is gone
    lease.refresh_from_db()
    phases = list(BootPhase.objects.filter(lease=lease).order_by("seq"))
    assert phases and all(lease.booting_at <= p.started_at <= p.ended_at <= lease.running_at for p in phases)
    assert sum(p.duration_s for p in phases) > 60  # the host's (simulated) seconds


def test_an_unreachable_agent_is_retried_and_the_watch_stops_promptly(transactional_db, settings):
    settings.AGENT_INSECURE = True
    forget_agents()
    server = Server(hostname="gone-0001", platform="hgx-h100-8", variant="supermicro", rack="r9", slot=1,
                    agent_endpoint="127.0.0.1:1")
    server.full_clean()
    server.save()
    with running_node_watch(rescan_s=0.1, backoff_s=0.05) as watch:
        assert wait_for(lambda: watch.health and sum(s.failures for s in watch.health.stats.values()) >= 2)
        started = time.monotonic()
    assert time.monotonic() - started < 5.0


def test_nodewatch_command_runs_until_sigterm(own_fleet, capsys):
    import os
    import signal
    import threading

    from django.core.management import call_command
    from django.db import connection

    [server] = register(own_fleet, actor=ACTOR, names={next(iter(own_fleet.endpoints))})
    delivered = threading.Event()

    def inject_until_recorded_then_terminate():
        try:
            admin = agent_for(server).sim_admin()
            for _ in range(30):  # re-inject until recorded: the command may not have subscribed yet
                admin.inject_thermal(5, 44.0)
                if wait_for(lambda: _gpu(server, 5).temperature_c == 44.0, timeout=0.3):
                    delivered.set()
                    break
        finally:
            connection.close()
            os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=inject_until_recorded_then_terminate, daemon=True)
    previous = signal.getsignal(signal.SIGTERM)
    helper.start()
    call_command("nodewatch", rescan=0.2)  # returns once SIGTERM arrives
    helper.join(10)
    assert delivered.is_set()
    assert signal.getsignal(signal.SIGTERM) is previous
    assert "node watch stopped" in capsys.readouterr().out


def test_the_watch_waits_for_the_agents_tls_material_then_starts(transactional_db, settings, tmp_path):
    """`make run` starts the fleet (which makes the development CA) beside the watcher: no crash."""
    from fleet.agents import tls_identity

    settings.AGENT_INSECURE = False
    settings.AGENT_TLS_DIR = str(tmp_path / "pki")  # nothing there yet
    tls_identity.cache_clear()
    try:
        with running_node_watch(rescan_s=0.05) as watch:
            time.sleep(0.3)
            assert watch.health is None  # still waiting, alive
            settings.AGENT_INSECURE = True  # the material is there (here: none is needed any more)
            assert wait_for(lambda: watch.health is not None)
    finally:
        tls_identity.cache_clear()
