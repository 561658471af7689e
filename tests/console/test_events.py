"""The events page: each filter narrows, keyset pages neither repeat nor skip a row while rows are
added between fetches, bad input is a form error, a page costs a constant number of queries, rows
link to their objects, one correlation id's life reads oldest first, and new rows reach the live socket."""

import re
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext

from console.audit import Actor
from console.models import AuditEvent
from fleet.models import Gpu, Server
from fleet.services import server_cordon
from tests.console.test_live import _communicator, _next, _until, in_worker_thread
from tests.factories import make_server, make_user

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ev(verb="fleet.gpu.free", *, actor="reconciler", source="task", target=("fleet.server", "1"), repr_="srv-1",
       correlation="", at=None, parent=("", ""), **kw) -> AuditEvent:
    """One audit row as a service would write it (`at` as of `at`)."""
    e = AuditEvent(actor_text=actor, source=source, verb=verb, target_type=target[0], target_id=target[1],
                   target_repr=repr_, correlation_id=correlation, parent_type=parent[0], parent_id=parent[1], **kw)
    with mock.patch("django.utils.timezone.now", return_value=at or datetime.now(UTC)):
        e.save()
    return e


def shown(response) -> list[int]:
    """The event ids of a page, top to bottom."""
    return [int(i) for i in re.findall(r'<tr id="event-(\d+)"', response.content.decode())]


@pytest.fixture
def viewer(client):
    client.force_login(make_user("viewer"))
    return client


@pytest.mark.django_db
def test_anonymous_is_sent_to_login_a_roleless_user_refused_a_viewer_reads(client):
    ev(correlation="c1")
    for url in ("/events/", "/events/correlation/c1/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    client.force_login(make_user(None))
    assert client.get("/events/").status_code == 403
    client.force_login(make_user("viewer"))
    assert client.get("/events/").status_code == 200
    assert client.get("/events/correlation/c1/").status_code == 200
    assert b'href="/events/"' in client.get("/").content, "nav link"


@pytest.mark.django_db
def test_each_filter_narrows_to_exactly_its_events(viewer):
    rows = [
        ev("fleet.gpu.free", actor="alice", source="web", target=("fleet.gpu", "5"), correlation="c1", at=T0),
        ev("fleet.gpu.reserved", actor="reconciler", target=("fleet.gpu", "6"), correlation="c1",
           at=T0 + timedelta(hours=1)),
        ev("fleet.server.cordoned", actor="alice", source="api", target=("fleet.server", "3"),
           at=T0 + timedelta(hours=2)),
        ev("tenants.lease.running", actor="lease-worker", target=("tenants.lease", "7"), correlation="c2",
           at=T0 + timedelta(hours=3)),
        ev("fleet.gpu.free", actor="bob", source="web", target=("fleet.gpu", "6"), at=T0 + timedelta(hours=4)),
    ]
    a, b, c, d, e = (r.pk for r in rows)
    cases = {
        "": [e, d, c, b, a],
        "actor=alice": [c, a],
        "verb=fleet.gpu.free": [e, a],
        "verb=fleet.gpu.": [e, b, a],  # a prefix
        "verb=fleet.*": [e, c, b, a],
        "verb=fleet.gpu": [],  # exact unless it ends in "." or "*"
        "target_type=fleet.gpu": [e, b, a],
        "target_type=fleet.gpu&target_id=6": [e, b],
        "source=web": [e, a],
        "correlation=c1": [b, a],
        "since=2026-03-01T13:00": [e, d, c, b],
        "until=2026-03-01T14:00": [b, a],
        "since=2026-03-01T13:00&until=2026-03-01T15:30": [d, c, b],
        "actor=alice&source=api": [c],
        "verb=fleet.gpu.&source=web&since=2026-03-01T12:30": [e],
    }
    for query, expected in cases.items():
        response = viewer.get(f"/events/?{query}")
        assert response.status_code == 200, query
        assert shown(response) == expected, query


@pytest.mark.django_db
def test_bad_filter_input_is_a_form_error_on_the_page(viewer):
    ev()
    for query, message in [
        ("target_type=fleet.server&target_id=abc", "Object id must be a whole number"),
        ("target_id=3", "Give the object"),
        ("before=12x", "must be a whole number"),
        ("since=yesterday", "Enter a valid date/time"),
        ("until=2026-13-45T99:00", "Enter a valid date/time"),
        ("since=2026-03-02T00:00&until=2026-03-01T00:00", "must be after"),
        ("source=carrier-pigeon", "Select a valid choice"),
    ]:
        response = viewer.get(f"/events/?{query}")
        assert response.status_code == 400, query
        html = response.content.decode()
        assert message in html, (query, html[:2000])
        assert 'role="alert"' in html and "<form" in html


def _walk(client, query: str, between=None) -> list[int]:
    """Every page from the newest through the Older links; `between(n)` runs after the n-th fetch."""
    ids, url, n = [], f"/events/?{query}", 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        ids += shown(response)
        n += 1
        if between:
            between(n)
        older = re.search(r'href="\?([^"]+)" rel="next"', response.content.decode())
        url = f"/events/?{older.group(1).replace('&amp;', '&')}" if older else None
    return ids


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["", "verb=fleet.gpu."])
def test_keyset_pages_neither_repeat_nor_skip_while_rows_are_added(viewer, query):
    existing = [ev("fleet.gpu.free" if i % 3 else "fleet.server.cordoned").pk for i in range(130)]
    if query:
        existing = [pk for pk in existing if AuditEvent.objects.get(pk=pk).verb.startswith("fleet.gpu.")]

    def add_more(n):  # new rows between page fetches: they belong above the first page, not in the walk
        for _ in range(7):
            ev("fleet.gpu.free")

    ids = _walk(viewer, query, add_more)
    assert ids == sorted(existing, reverse=True)
    assert len(ids) == len(set(ids))
    # the newest page now starts with the rows added meanwhile
    assert shown(viewer.get(f"/events/?{query}"))[0] == AuditEvent.objects.order_by("-id").first().pk


@pytest.mark.django_db
def test_a_page_costs_the_same_queries_whatever_it_shows(viewer):
    server = make_server()
    gpus = list(Gpu.objects.filter(server=server))

    def fill(n):
        for i in range(n):
            gpu = gpus[i % len(gpus)]
            ev("fleet.gpu.free", target=("fleet.gpu", str(gpu.pk)), repr_=str(gpu))
            ev("fleet.server.cordoned", target=("fleet.server", str(server.pk)), repr_=server.hostname)
            ev("tenants.lease.running", target=("tenants.lease", str(i + 1)), repr_=f"lease-{i + 1}")
            ev("fleet.partition.active", target=("fleet.partition", "1"), repr_="p1")

    fill(1)
    viewer.get("/events/")
    with CaptureQueriesContext(connection) as few:
        assert viewer.get("/events/").status_code == 200
    fill(40)
    with CaptureQueriesContext(connection) as many:
        response = viewer.get("/events/")
    assert len(shown(response)) == 50
    with CaptureQueriesContext(connection) as deep:
        viewer.get(f"/events/?before={shown(response)[-1]}")
    assert len(few.captured_queries) == len(many.captured_queries) == len(deep.captured_queries), [
        q["sql"] for q in many.captured_queries]


@pytest.mark.django_db
def test_rows_link_to_their_objects(viewer):
    server = make_server(hostname="srv-0042")
    gpu = Gpu.objects.filter(server=server).first()
    ev("fleet.server.cordoned", target=("fleet.server", str(server.pk)), repr_="srv-0042")
    ev("fleet.gpu.quarantined", target=("fleet.gpu", str(gpu.pk)), repr_=str(gpu))
    ev("tenants.lease.running", target=("tenants.lease", "17"), repr_="lease-17")
    ev("tenants.bootphase.finished", target=("tenants.bootphase", "3"), repr_="lease-17 plug",
       parent=("tenants.lease", "17"))
    ev("tenants.tenant.created", target=("tenants.tenant", "2"), repr_="acme")
    ev("console.operation.started", target=("console.operation", "9"), repr_="server.drain")
    html = viewer.get("/events/").content.decode()
    assert f'<a href="/servers/{server.pk}/">srv-0042</a>' in html
    assert f'<a href="/servers/{server.pk}/">{gpu}</a>' in html
    assert '<a href="/leases/17/">lease-17</a>' in html
    assert '<a href="/leases/17/">lease-17 plug</a>' in html
    assert '<a href="/tenants/acme/">acme</a>' in html
    assert "<td>server.drain" in html, "no page: plain text"


@pytest.mark.django_db
def test_a_correlation_id_shows_one_life_oldest_first(viewer):
    life = [ev(v, correlation="abc123", target=("tenants.lease", "5"), repr_="lease-5", at=T0 + timedelta(seconds=i))
            for i, v in enumerate(["tenants.lease.requested", "tenants.lease.placed", "tenants.lease.running"])]
    ev("tenants.lease.requested", correlation="other")
    page = viewer.get("/events/")
    assert 'href="/events/correlation/abc123/"' in page.content.decode()
    response = viewer.get("/events/correlation/abc123/")
    assert shown(response) == [e.pk for e in life]
    assert "took 2.0 s" in response.content.decode()
    assert viewer.get("/events/correlation/abc123/?after=zz").status_code == 400


@pytest.mark.django_db(transaction=True)
async def test_a_new_matching_event_reaches_the_events_socket(memory_layer, client):
    server = await sync_to_async(make_server)()
    await sync_to_async(client.force_login)(await sync_to_async(make_user)("viewer"))
    cookie = client.cookies["sessionid"].value
    comm = _communicator("/ws/events/?verb=fleet.server.cordoned", cookie)
    other = _communicator("/ws/events/?verb=fleet.gpu.", cookie)
    assert (await comm.connect())[0] and (await other.connect())[0]
    await _until(comm, lambda m: m["type"] == "hello")
    await _until(other, lambda m: m["type"] == "hello")
    await sync_to_async(in_worker_thread)(
        lambda: server_cordon(server=Server.objects.get(pk=server.pk), actor=Actor.system("worker")))
    event = await sync_to_async(AuditEvent.objects.get)(verb="fleet.server.cordoned")
    msg, _ = await _until(comm, lambda m: m["type"] == "rows")
    assert msg["into"] == "events-rows" and f'id="event-{event.pk}"' in msg["html"]
    assert f'<a href="/servers/{server.pk}/">' in msg["html"]
    assert msg["v"] >= event.pk
    assert await _next(other, 0.5) is None, "filters apply to live rows"
    await comm.disconnect()
    await other.disconnect()
    refused = _communicator("/ws/events/?before=5", cookie)
    assert not (await refused.connect())[0], "only the first page is live"
