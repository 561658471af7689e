"""The fleet map's finishing touches: every cell's name from compact data, times in state with their
limits (overdue marked), a booting lease's GPUs, and several servers drained as one operation."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from console.audit import Actor
from console.models import AuditEvent, Operation
from fleet import previews
from fleet.models import Gpu, Server
from fleet.services import gpu_scrub
from tenants.models import BootPhase
from tenants.orchestration import boot_limits
from tests.factories import make_server, make_user
from tests.factories.tenants import LeaseFactory
from tests.support.demo import hold

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def tile_of(html: str, server) -> str:
    return re.search(rf'<a id="server-{server.pk}".*?</a>', html, re.S).group(0)


@pytest.fixture
def viewer_client(client):
    client.force_login(make_user("viewer"))
    return client


@pytest.fixture
def support_client(client):
    client.force_login(make_user("support"))
    return client


def test_every_cell_carries_what_its_name_says(viewer_client):
    """live.js names each cell "srv-0412 GPU 3: in use, acme, lease 42, 61 °C, last Xid 79" from
    this: the class, the holder run's data-t/data-l, the tile's temperatures, the cell's Xid."""
    server = make_server(hostname="srv-0412")
    hold(server, 9, holder="lease/42", owner="acme")  # GPU 3
    hold(server, 10, holder="lease/43", owner="acme")  # GPU 4: the same tenant, another lease
    Gpu.objects.filter(server=server).update(temperature_c=40.4)
    Gpu.objects.filter(server=server, module_id=3).update(temperature_c=61.2, last_xid=79)
    Gpu.objects.filter(server=server, module_id=8).update(temperature_c=None)
    tile = tile_of(viewer_client.get("/").content.decode(), server)
    assert 'data-c="40 40 61 40 40 40 40 -"' in tile
    assert ('<i class="f"></i><i class="u" data-t="acme" data-l="42" data-x="79">A</i>'
            '<i class="u" data-t="acme" data-l="43">A</i><i class="f"></i>') in tile
    assert tile.count("<i ") == 8 and "aria-label=" not in tile.split(">", 1)[1], "cells are named client-side"


def test_transitional_states_show_time_in_state_and_overdue(viewer_client, monkeypatch):
    server = make_server()
    gpu = server.gpus.get(module_id=2)
    gpu_scrub(gpu=gpu, actor=ACTOR)
    tile = tile_of(viewer_client.get("/").content.decode(), server)
    cell = re.search(r'<i class="s" data-s="(\d+)" data-o="900"></i>', tile)
    assert cell and abs(int(cell.group(1)) - timezone.now().timestamp()) < 60
    assert re.search(r'<b class="ws" data-s="\d+" data-o="900">scrubbing &lt;1 min</b>', tile)

    from fleet import overview

    monkeypatch.setitem(overview.STATE_LIMITS_S, "scrubbing", -1)
    tile = tile_of(viewer_client.get("/").content.decode(), server)
    assert re.search(r'<i class="s od" data-s="\d+" data-o="-1"></i>', tile)
    assert '<b class="ws od"' in tile and "worst GPU scrubbing &lt;1 min, overdue" in tile


def test_a_booting_lease_is_timed_by_its_pods_start_up_timeout(viewer_client):
    server = make_server()
    allocation = hold(server, 1, holder="lease/7", owner="acme")  # GPUs 1-4
    lease = LeaseFactory(state="booting", gpu_count=4, allocation=allocation,
                         booting_at=timezone.now() - timedelta(minutes=3))
    BootPhase.objects.create(lease=lease, seq=0, phase="vfio", predicted_seconds=100)
    BootPhase.objects.create(lease=lease, seq=1, phase="guest", predicted_seconds=20)
    limit = boot_limits().pod_timeout_s(120)
    tile = tile_of(viewer_client.get("/").content.decode(), server)
    assert tile.count(f'data-o="{limit}"') == 5  # its four cells and the tile's badge
    assert re.search(r'<i class="u bt" data-t="acme" data-l="7" data-s="\d+"', tile)
    assert re.search(rf'<b class="ws" data-s="\d+" data-o="{limit}">booting 3 min</b>', tile)

    type(lease).objects.filter(pk=lease.pk).update(booting_at=timezone.now() - timedelta(seconds=limit + 60))
    tile = tile_of(viewer_client.get(f"/servers/{server.pk}/tile/").content.decode(), server)
    assert '<i class="u bt od"' in tile and '<b class="ws od"' in tile


def _leased(n: int) -> list[Server]:
    servers = []
    for i in range(n):
        server = make_server(hostname=f"sel-{i + 1}")
        hold(server, 1, holder=f"lease/{100 + i}", owner="acme" if i % 2 == 0 else "beta")
        servers.append(server)
    return servers


def test_a_multi_server_drain_lists_every_server_asks_for_the_count_and_refuses_a_change(support_client):
    servers = _leased(3)
    ids = [s.pk for s in servers]
    response = support_client.post("/actions/server.drain/preview/", {"target_ids": [str(i) for i in ids]})
    html = response.content.decode()
    assert "Drain 3 servers, with 3 leases of acme, beta (12 GPUs) on them" in html
    for i, s in enumerate(servers):
        assert f"<li>Drain {s.hostname}: 1 lease of" in html
        assert f"— lease {100 + i} ({'acme' if i % 2 == 0 else 'beta'}, 4 GPUs)</li>" in html
    assert "Type <code>3</code> to confirm" in html
    token = re.search(r'name="token" value="([^"]+)"', html).group(1)

    wrong = support_client.post("/actions/confirm/", {"token": token, "typed": "sel-1"})
    assert wrong.status_code == 400 and "type &#x27;3&#x27; to confirm" in wrong.content.decode()
    # A change since the preview (one of them cordoned meanwhile): refused, with the fresh preview.
    from fleet.services import server_cordon

    server_cordon(server=servers[1], actor=ACTOR)
    changed = support_client.post("/actions/confirm/", {"token": token, "typed": "3"})
    assert changed.status_code == 409 and "Something changed since the preview" in changed.content.decode()
    assert Server.objects.filter(pk__in=ids, state="draining").count() == 0, "nothing applied"


def test_a_cancelled_multi_drain_leaves_every_server_cordoned(support_client):
    servers = [*_leased(2), make_server(hostname="sel-empty")]
    ids = [s.pk for s in servers]
    p = previews.preview(action="server.drain", target_ids=ids)
    assert p.friction == previews.TYPE and p.confirm_text == "3"
    done = support_client.post("/actions/confirm/", {"token": p.token, "typed": "3"})
    assert done.status_code == 200
    group = Operation.objects.get(kind="servers.drain")
    assert group.target_repr == "3 servers: sel-1, sel-2, sel-empty"
    parts = list(group.children.order_by("pk"))
    assert [o.kind for o in parts] == ["server.drain"] * 3
    assert [o.status for o in parts] == ["running", "running", "succeeded"]  # the empty one drained at once
    group.refresh_from_db()
    assert group.status == "running" and group.progress == (50 + 50 + 100) // 3
    event = AuditEvent.objects.get(verb="fleet.action.server.drain")
    assert event.after["operation"] == group.pk and event.after["targets"] == ids

    # The operation's Cancel previews the cancel of every drain still running, and confirms it.
    fragment = support_client.get(f"/operations/{group.pk}/").content.decode()
    assert f'name="target_ids" value="{ids[0]},{ids[1]}"' in fragment
    cancel = support_client.post("/actions/server.drain_cancel/preview/", {"target_ids": f"{ids[0]},{ids[1]}"})
    token = re.search(r'name="token" value="([^"]+)"', cancel.content.decode()).group(1)
    assert support_client.post("/actions/confirm/", {"token": token}).status_code == 200
    states = dict(Server.objects.filter(pk__in=ids).values_list("hostname", "state"))
    assert states == {"sel-1": "cordoned", "sel-2": "cordoned", "sel-empty": "drained"}
    group.refresh_from_db()
    assert group.status == "cancelled" and group.finished_at is not None
    assert set(group.children.values_list("status", flat=True)) == {"cancelled", "succeeded"}
