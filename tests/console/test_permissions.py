"""The permission matrix: every page and action for anonymous, role-less, viewer, support and admin
users. Anonymous users go to the login page; viewers read but get 403 on every action and see no
button; support and admin act."""

import pytest

from fleet.previews import ACTIONS
from tests.factories import make_server, make_user
from tests.support.demo import hold

pytestmark = pytest.mark.django_db
ROLES = ("anonymous", "none", "viewer", "support", "admin")
CAN_READ = {"anonymous": 302, "none": 403, "viewer": 200, "support": 200, "admin": 200}
CAN_ACT = {"anonymous": 302, "none": 403, "viewer": 403, "support": 200, "admin": 200}


@pytest.fixture
def fleet():
    server = make_server()
    hold(server, 1, holder="lease/42", owner="acme")
    return server


def _client(client, role):
    if role != "anonymous":
        client.force_login(make_user(None if role == "none" else role))
    return client


PAGES = ["/", "/servers/{pk}/", "/servers/{pk}/gpus/1/", "/servers/{pk}/tile/"]


@pytest.mark.parametrize("role", ROLES)
def test_pages(client, fleet, role):
    c = _client(client, role)
    for page in PAGES:
        response = c.get(page.format(pk=fleet.pk))
        assert response.status_code == CAN_READ[role], page
        if role == "anonymous":
            assert response["Location"].startswith("/login/")


@pytest.mark.parametrize("role", ROLES)
def test_action_previews(client, fleet, role):
    c = _client(client, role)
    for action in ACTIONS:
        target = fleet.pk if action.startswith("server.") else fleet.gpus.get(module_id=8).pk
        response = c.post(f"/actions/{action}/preview/", {"target_ids": target}, HTTP_HX_REQUEST="true")
        assert response.status_code == CAN_ACT[role], action


@pytest.mark.parametrize("role", ROLES)
def test_confirm(client, fleet, role):
    from fleet.previews import preview

    token = preview(action="server.cordon", target_ids=[fleet.pk]).token
    response = _client(client, role).post("/actions/confirm/", {"token": token}, HTTP_HX_REQUEST="true")
    assert response.status_code == CAN_ACT[role]
    fleet.refresh_from_db()
    assert fleet.state == ("cordoned" if CAN_ACT[role] == 200 else "active")


@pytest.mark.parametrize("role", ["viewer", "support", "admin"])
def test_buttons_are_rendered_only_for_those_who_may_press_them(client, fleet, role):
    c = _client(client, role)
    pages = [c.get(f"/servers/{fleet.pk}/").content.decode(), c.get(f"/servers/{fleet.pk}/gpus/8/").content.decode()]
    for html in pages:
        assert ("data-action=" in html) == (role != "viewer")
        assert ("/actions/" in html) == (role != "viewer")


def test_admin_link_only_for_staff(client, fleet):
    assert 'href="/admin/"' not in _client(client, "support").get("/").content.decode()
