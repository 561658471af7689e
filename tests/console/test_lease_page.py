"""The lease page: who may read it and release, the boot timeline (every phase in order with its
ghost prediction, the slowest marked with its remedy), a constant number of queries, refusals in
words, and the live consumer sending a new timeline at a phase boundary."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from console.audit import Actor
from console.models import AuditEvent
from fleet.boot import server_boot_estimate
from hardware.boot_model import PHASES
from hardware.types import BootPhaseEvent
from tenants.boot_timeline import PHASE_LABELS, remedy
from tenants.constants import GUEST_RAM_GIB
from tenants.models import BootPhase, Lease
from tenants.orchestration import lease_record_boot_event
from tenants.states import LEASE_MACHINE, LeaseState, TenantState
from tests.factories import LeaseFactory, TenantFactory, make_server, make_user
from tests.support.demo import hold

ACTOR = Actor.system("tests")
ROLES = ("anonymous", "none", "viewer", "support", "admin")
CAN_READ = {"anonymous": 302, "none": 403, "viewer": 200, "support": 200, "admin": 200}
CAN_ACT = {"anonymous": 302, "none": 403, "viewer": 403, "support": 200, "admin": 200}


def booting_lease(*, done: int = 3, gpus: int = 2, tenant: str = "acme", server=None, slow: str = "") -> Lease:
    """A lease booting on a simulated-looking server: `done` phases measured (each 10 % over its
    prediction, `slow` twenty times over), the next one running for 5 s."""
    server = server or make_server()
    lease = LeaseFactory(tenant=TenantFactory(name=tenant, state=TenantState.READY), gpu_count=gpus,
                         correlation_id=f"req-{tenant}")
    partition = server.partitions.filter(size=gpus, state="inactive").order_by("partition_id").first()
    allocation = hold(server, partition.partition_id, holder=f"lease/{lease.pk}", owner=tenant)
    Lease.objects.filter(pk=lease.pk).update(allocation=allocation)
    for state in (LeaseState.PLACED, LeaseState.PARTITIONING, LeaseState.BOOTING):
        LEASE_MACHINE.transition(lease, state, actor=ACTOR)
    estimate = server_boot_estimate(server, gpus=gpus, guest_ram_gib=GUEST_RAM_GIB)
    now = timezone.now()
    Lease.objects.filter(pk=lease.pk).update(booting_at=now - timedelta(seconds=5 + done))
    for seq, (phase, predicted) in enumerate(estimate.phases):
        row = BootPhase(lease=lease, seq=seq, phase=phase, predicted_seconds=predicted)
        if seq < done:
            row.duration_s = predicted * (20 if phase == slow else 1.1)
            row.started_at = row.ended_at = now - timedelta(seconds=5 + done - seq - 1)
            row.detail = f"{gpus} GPU(s)"
        row.save()
    return Lease.objects.get(pk=lease.pk)


def _client(client, role):
    if role != "anonymous":
        client.force_login(make_user(None if role == "none" else role))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_permission_matrix_pages_and_release(client, role):
    lease = booting_lease()
    c = _client(client, role)
    for url in ("/leases/", f"/leases/{lease.pk}/"):
        response = c.get(url)
        assert response.status_code == CAN_READ[role], url
        if role == "anonymous":
            assert response["Location"].startswith("/login/")
    if CAN_READ[role] == 200:
        html = c.get(f"/leases/{lease.pk}/").content.decode()
        assert ('data-action="lease.release"' in html) == (CAN_ACT[role] == 200)
    assert c.get(f"/leases/{lease.pk}/release/").status_code == CAN_ACT[role]
    response = c.post(f"/leases/{lease.pk}/release/", HTTP_HX_REQUEST="true")
    assert response.status_code == CAN_ACT[role]
    lease.refresh_from_db()
    assert lease.state == (LeaseState.RELEASING if CAN_ACT[role] == 200 else LeaseState.BOOTING)
    if CAN_ACT[role] == 200:
        event = AuditEvent.objects.get(target_type="tenants.lease", target_id=str(lease.pk),
                                       verb="tenants.lease.releasing")
        assert event.actor_id is not None and event.source == "web"
        assert "Release started: lease" in response.content.decode()


@pytest.mark.django_db
def test_a_refused_release_is_explained_never_an_error(client):
    lease = booting_lease()
    client.force_login(make_user("support"))
    assert client.post(f"/leases/{lease.pk}/release/").status_code == 200
    again = client.post(f"/leases/{lease.pk}/release/", HTTP_HX_REQUEST="true")
    assert again.status_code == 409
    assert "already being released" in again.content.decode() and "nothing was done" in again.content.decode()
    page = client.get(f"/leases/{lease.pk}/").content.decode()
    assert 'data-action="lease.release"' not in page and "already being released" in page
    assert client.post("/leases/999999/release/").status_code == 404
    assert client.get("/leases/999999/").status_code == 404


@pytest.mark.django_db
def test_the_timeline_shows_every_phase_in_order_with_ghosts_and_marks_the_slowest(client):
    server = make_server()
    server.host_kernel_version, server.plug_mode = "6.8.0-45-generic", "hot"
    server.save()
    lease = booting_lease(done=4, server=server, slow="plug")
    client.force_login(make_user("viewer"))
    html = client.get(f"/leases/{lease.pk}/").content.decode()
    timeline = re.search(rf'<section id="lease-{lease.pk}-timeline".*?</section>', html, re.S).group(0)
    rows = re.findall(r'<div class="tl-row ph-(\w+) tl-([\w-]+)( slowest)?"', timeline)
    assert [r[0] for r in rows] == list(PHASES)
    assert [r[1] for r in rows] == ["done"] * 4 + ["running"] + ["waiting"] * 3
    assert [r[0] for r in rows if r[2]] == ["plug"]
    predicted = [p for p in BootPhase.objects.filter(lease=lease).order_by("seq") if p.predicted_seconds]
    assert timeline.count('class="tl-ghost" style=') == len(predicted)
    assert timeline.count('class="tl-bar" style=') == 4 and timeline.count('class="tl-bar run" style=') == 1
    assert "Slowest: Plug</b>" in timeline and "GPUs hot-plugged one by one: cold-plug" in timeline
    for label in PHASE_LABELS.values():
        assert label in timeline
    assert "6.8.0-45-generic" in timeline  # the features that drove the prediction
    # The table beneath reads without the chart.
    table = re.search(r'<table class="phases">.*?</table>', timeline, re.S).group(0)
    assert table.count("<tr class=\"ph-") == 8 and "so far" in table
    # The lease's GPUs link to their server; the state history has its times.
    assert f'href="/servers/{server.pk}/#gpu-' in html
    assert re.search(r"<th scope=\"row\">booting</th><td><time", html)


def test_remedies_follow_the_mechanisms():
    old = {"host_kernel": "5.15.0-105-generic", "plug_mode": "hot", "guest_kernel": "5.15.0", "init_system": "systemd"}
    assert remedy("bar_mapping", {**old, "host_kernel": "6.8.0"}).startswith(
        "BAR mapped in 4 KiB steps: a host kernel with huge-pfnmap VFIO")
    assert "page by page" in remedy("bar_mapping", old)
    assert "QEMU ≥ 9.2" in remedy("bar_mapping", {**old, "host_kernel": "6.12.3", "qemu_version": "8.2"})
    assert remedy("plug", {**old, "host_kernel": "6.8"}) == "GPUs hot-plugged one by one: cold-plug"
    assert "nothing left" in remedy("plug", {**old, "plug_mode": "cold"})
    assert "NVRC" in remedy("init_cdi", old) and "huge pages" in remedy("ram_pinning", old)
    assert "≥ 6.14" in remedy("guest_pci_enumeration", old)


@pytest.mark.django_db
def test_query_count_does_not_grow_with_phases_or_events(client):
    client.force_login(make_user("viewer"))
    few = booting_lease(done=1, tenant="few")
    many = booting_lease(done=7, tenant="many")
    for i in range(20):
        from tenants.services import lease_set_condition
        lease_set_condition(lease=many, actor=ACTOR, type="GpuFault", status=bool(i % 2), reason="Xid79",
                            message=f"fault {i}")
    counts = []
    for lease in (few, many):
        client.get(f"/leases/{lease.pk}/")
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(f"/leases/{lease.pk}/").status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts
    html = client.get(f"/leases/{many.pk}/").content.decode()
    assert "GpuFault" in html and "Xid79" in html  # the condition


@pytest.mark.django_db
def test_the_list_links_each_lease_and_a_pending_lease_has_no_boot(client):
    lease = booting_lease()
    pending = LeaseFactory(tenant=lease.tenant, gpu_count=8)
    client.force_login(make_user("viewer"))
    html = client.get("/leases/").content.decode()
    assert f'href="/leases/{lease.pk}/"' in html and f'href="/leases/{pending.pk}/"' in html
    assert client.get("/leases/?state=nonsense").status_code == 200
    page = client.get(f"/leases/{pending.pk}/").content.decode()
    assert "No boot yet" in page
    assert 'data-live="/ws/leases/' in page and "Leases</a>" in page  # nav link


@pytest.mark.django_db
def test_the_server_page_and_gpu_card_link_to_the_lease(client):
    lease = booting_lease()
    client.force_login(make_user("viewer"))
    html = client.get(f"/servers/{lease.server_id}/").content.decode()
    assert html.count(f'href="/leases/{lease.pk}/"') >= 3  # partition map + each GPU row
    module = lease.partition.module_ids[0]
    card = client.get(f"/servers/{lease.server_id}/gpus/{module}/").content.decode()
    assert f'href="/leases/{lease.pk}/"' in card


# ------------------------------------------------------------------------------ the live consumer
def _communicator(path, cookie):
    from console.asgi import application

    headers = [(b"origin", b"http://testserver"), (b"host", b"testserver"),
               (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={cookie}".encode())]
    return WebsocketCommunicator(application, path, headers=headers)


@pytest.mark.django_db(transaction=True)
async def test_the_consumer_sends_the_timeline_at_a_phase_boundary(client, memory_layer):
    lease = await sync_to_async(booting_lease)(done=2)

    def login():
        client.force_login(make_user("viewer"))
        return client.cookies[django_settings.SESSION_COOKIE_NAME].value
    cookie = await sync_to_async(login)()
    assert not (await _communicator("/ws/leases/999999/", cookie).connect())[0]
    comm = _communicator(f"/ws/leases/{lease.pk}/", cookie)
    assert (await comm.connect())[0]
    assert json.loads(await comm.receive_from())["type"] == "hello"

    def phase_ends():
        row = BootPhase.objects.get(lease=lease, seq=2)
        at = timezone.now()
        lease_record_boot_event(lease=Lease.objects.get(pk=lease.pk),
                                event=BootPhaseEvent("vm", row.phase, at - timedelta(seconds=4), at), actor=ACTOR)
    await sync_to_async(phase_ends)()
    msg = None
    for _ in range(50):
        if not await comm.receive_nothing(timeout=0.1):
            msg = json.loads(await comm.receive_from())
            if msg["type"] == "fragments":
                break
    assert msg and msg["type"] == "fragments", msg
    timeline = msg["html"][f"lease-{lease.pk}-timeline"]
    assert re.findall(r'tl-row ph-\w+ tl-(\w+)', timeline)[:4] == ["done", "done", "done", "running"]
    assert set(msg["html"]) == {f"lease-{lease.pk}-{p}" for p in ("header", "timeline", "facts", "history")}
    assert 'data-action="lease.release"' not in msg["html"][f"lease-{lease.pk}-header"]  # a viewer's render
    await comm.disconnect()
