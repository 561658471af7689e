"""The operator pages: behind login, the fleet map and a server's page read well and cost a constant
number of queries whatever the fleet's size; htmx requests get the fragment by its root id."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from console.audit import Actor
from fleet.services import gpu_quarantine, server_cordon, server_drain
from tests.factories import make_server, make_user
from tests.support.demo import hold, lived_in

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def find(pattern: str, html: str):
    return re.search(pattern, html, re.S)


@pytest.fixture
def viewer_client(client):
    client.force_login(make_user("viewer"))
    return client


def test_anonymous_is_sent_to_login(client):
    server = make_server()
    for url in ("/", f"/servers/{server.pk}/", f"/servers/{server.pk}/gpus/1/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    assert client.get("/login/").status_code == 200


def test_a_user_without_a_role_is_refused(client):
    make_server()
    client.force_login(make_user(None))
    assert client.get("/").status_code == 403


def test_map_shows_racks_tiles_cells_and_legend(viewer_client):
    servers = [make_server(rack="r01"), make_server("hgx-a100-8", rack="r02"), make_server(rack="r01", slot=2)]
    hold(servers[0], 1, holder="lease/42", owner="acme")
    html = viewer_client.get("/").content.decode()
    for server in servers:
        tile = find(rf'<a id="server-{server.pk}" class="t s-active[^"]*"[^>]*>.*?</a>', html)
        assert tile, server
        assert server.hostname in tile.group(0)
        assert tile.group(0).count("<i ") == 8
    first = find(rf'<a id="server-{servers[0].pk}".*?</a>', html).group(0)
    # Tenant and lease on the first cell of the holder's run; the cells after it are the same holder's.
    assert '<i class="u" data-t="acme" data-l="42">A</i><i class="u">A</i><i class="u">A</i><i class="u">A</i>' in first
    assert 'aria-label="Rack r01"' in html and 'aria-label="Rack r02"' in html
    assert find(r'data-state="in_use"><i class="g u"[^>]*></i>In use <b>4</b>', html)
    assert find(r'data-state="free"><i class="g f"[^>]*></i>Free <b>20</b>', html)
    assert "hx-" not in first, "no per-cell (or per-tile) htmx attributes"


def test_a_drained_or_cordoned_server_is_never_shown_available(viewer_client):
    cordoned, draining, drained, active = make_server(), make_server(), make_server(), make_server()
    server_cordon(server=cordoned, actor=ACTOR)
    hold(draining, 12, holder="lease/1", owner="acme")
    server_drain(server=draining, actor=ACTOR)
    server_drain(server=drained, actor=ACTOR)  # nothing runs: drained at once
    html = viewer_client.get("/").content.decode()
    assert find(rf'id="server-{cordoned.pk}" class="t s-cordoned".*?<b class="ss">cordoned', html)
    assert find(rf'id="server-{draining.pk}" class="t s-draining".*?'
                r'<b class="ss" data-s="\d+" data-o="3600">draining &lt;1 min', html)
    assert find(rf'id="server-{drained.pk}" class="t s-drained".*?<b class="ss">drained', html)
    for server in (cordoned, draining, drained):
        assert find(rf'id="server-{server.pk}".*?0/8 GPUs available', html)
    assert find(rf'id="server-{active.pk}".*?8/8 GPUs available', html)
    # The capacity strip counts only schedulable servers: one server, one 8-GPU lease at most.
    capacity = find(r'<section id="fleet-capacity".*?</section>', html).group(0)
    assert "<strong>8</strong> GPUs free" in capacity and "<b>1</b>&times;8-GPU" in capacity


def test_worst_gpu_state_and_overdue_on_the_tile(viewer_client, monkeypatch):
    server = make_server()
    gpu = server.gpus.order_by("module_id").first()
    gpu_quarantine(gpu=gpu, actor=ACTOR, reason="Xid 79")
    html = viewer_client.get("/").content.decode()
    assert find(rf'id="server-{server.pk}" class="t s-active w-q".*?<b class="ws">quarantined</b>', html)
    from fleet import overview

    monkeypatch.setitem(overview.STATE_LIMITS_S, "draining", -1)
    hold(server, 12, holder="lease/1", owner="acme")
    server_drain(server=server, actor=ACTOR)
    html = viewer_client.get("/").content.decode()
    assert find(rf'id="server-{server.pk}" class="t s-draining w-q od"', html)


def test_capacity_strip_is_partition_aware(viewer_client):
    server = make_server()
    hold(server, 12, holder="lease/1", owner="acme")  # one single on GPU 6: its pair, quad and the 8 are gone
    html = viewer_client.get("/").content.decode()
    capacity = find(r'<section id="fleet-capacity".*?</section>', html).group(0)
    assert "<strong>7</strong> GPUs free" in capacity
    assert "<b>0</b>&times;8-GPU" in capacity and "<b>1</b>&times;4-GPU" in capacity
    assert "<b>3</b>&times;2-GPU" in capacity and "<b>7</b>&times;1-GPU" in capacity


def test_filters_and_hostname_search(viewer_client):
    a, b = make_server(hostname="alpha-01"), make_server("hgx-a100-8", hostname="beta-02")
    hold(a, 1, holder="lease/7", owner="acme")
    server_cordon(server=b, actor=ACTOR)

    def shown(**params):
        html = viewer_client.get("/", params).content.decode()
        return {pk for pk in (a.pk, b.pk) if f'id="server-{pk}"' in html}

    assert shown() == {a.pk, b.pk}
    assert shown(q="beta") == {b.pk}
    assert shown(tenant="acme") == {a.pk}
    assert shown(platform="hgx-a100-8") == {b.pk}
    assert shown(state="cordoned") == {b.pk}
    assert shown(state="in_use") == {a.pk}
    assert shown(health="healthy") == {a.pk}


def test_htmx_request_gets_the_map_fragment(viewer_client):
    make_server()
    html = viewer_client.get("/", HTTP_HX_REQUEST="true").content.decode()
    assert html.lstrip().startswith('<div id="fleet-map"')
    assert "<html" not in html


def _queries(client, url) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx.captured_queries)


def test_map_query_count_does_not_grow_with_the_fleet(viewer_client):
    servers = [make_server() for _ in range(2)]
    lived_in(servers)
    small = _queries(viewer_client, "/")
    more = [make_server() for _ in range(10)]
    lived_in(more)
    assert _queries(viewer_client, "/") == small
    assert small <= 14, small


def test_server_page_query_count_does_not_grow(viewer_client):
    small = make_server()
    lived_in([small])
    few = _queries(viewer_client, f"/servers/{small.pk}/")
    big = make_server()
    lived_in([make_server(), big])
    for i in range(30):
        server_cordon(server=big, actor=ACTOR) if i % 2 == 0 else __import__("fleet.services").services.server_uncordon(
            server=big, actor=ACTOR)
    assert _queries(viewer_client, f"/servers/{big.pk}/") == few
    assert few <= 20, few


def test_server_page_shows_the_partition_tree_gpus_and_history(viewer_client):
    server = make_server()
    hold(server, 3, holder="lease/42", owner="acme")  # GPUs 1,3
    gpu5 = server.gpus.get(module_id=5)
    gpu_quarantine(gpu=gpu5, actor=ACTOR, reason="thermal shutdown")
    html = viewer_client.get(f"/servers/{server.pk}/").content.decode()
    tree = find(r'<section id="server-\d+-partitions".*?</section>', html).group(0)
    # 8 → 4+4 → pairs → singles, nested in that order.
    assert find(r'<b>P0</b> GPUs 1,2,3,4,5,6,7,8.*?<ul><li[^>]*><span[^>]*><b>P1</b> GPUs 1,2,3,4', tree)
    assert find(r'class="pn size-2 on"><span[^>]*><b>P3</b> GPUs 1,3 · <span class="state">active</span>'
                     r' · <a href="/leases/42/">lease 42</a> \(acme, active\)', tree)
    assert "inside active partition 3 (lease 42, acme)" in tree
    assert "overlaps active partition 3 (lease 42, acme)" in tree
    assert "GPU 5 is quarantined: thermal shutdown" in tree
    gpus = find(r'<section id="server-\d+-gpus".*?</section>', html).group(0)
    assert '<a href="/leases/42/">lease 42</a> · acme' in gpus and "0000:" in gpus
    assert "NVSwitches" in html and "fleet.gpu.quarantined" in html


def test_firmware_off_pin_and_xid_with_its_action(viewer_client):
    server = make_server()
    gpu = server.gpus.get(module_id=2)
    type(gpu).objects.filter(pk=gpu.pk).update(firmware_version="96.00.5E.00.01", last_xid=48)
    html = viewer_client.get(f"/servers/{server.pk}/").content.decode()
    assert "96.00.5E.00.01 ≠ pinned" in html
    assert "Xid 48: double-bit ECC error" in html and "drain_and_reset" in html


def test_gpu_card_has_the_accessible_name(viewer_client):
    server = make_server(hostname="srv-0412")
    hold(server, 9, holder="lease/42", owner="acme")  # GPU 3
    gpu = server.gpus.get(module_id=3)
    type(gpu).objects.filter(pk=gpu.pk).update(temperature_c=61.2, last_xid=79)
    html = viewer_client.get(f"/servers/{server.pk}/gpus/3/", HTTP_HX_REQUEST="true").content.decode()
    assert "srv-0412 GPU 3: in use, acme, lease 42, 61 °C, last Xid 79" in html


def test_unknown_server_is_404(viewer_client):
    assert viewer_client.get("/servers/999999/").status_code == 404


def test_ensureadmin_prints_credentials_once_and_puts_the_admin_in_admin(capsys):
    call_command("ensureadmin")
    first = capsys.readouterr().out
    assert "password" in first
    call_command("ensureadmin")
    second = capsys.readouterr().out
    assert "exists" in second and first.split()[-1] not in second
    admin = get_user_model().objects.get(username="admin")
    assert list(admin.groups.values_list("name", flat=True)) == ["admin"]
