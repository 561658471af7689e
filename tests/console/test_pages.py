"""The first page: behind login, lists servers with their GPU states; htmx gets the fragment."""

import pytest
from django.core.management import call_command

from tests.factories import UserFactory, make_server

pytestmark = pytest.mark.django_db


def test_anonymous_is_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert client.get("/login/").status_code == 200


def test_overview_lists_servers_and_gpu_states(client, django_assert_max_num_queries):
    servers = [make_server(), make_server("hgx-a100-8")]
    client.force_login(UserFactory())
    with django_assert_max_num_queries(8):
        response = client.get("/")
    html = response.content.decode()
    assert response.status_code == 200
    for server in servers:
        assert f'id="server-{server.pk}"' in html and server.hostname in html
        for gpu in server.gpus.all():
            assert f'id="gpu-{gpu.pk}" class="gpu free"' in html


def test_query_count_does_not_grow_with_servers(client, django_assert_max_num_queries):
    for _ in range(6):
        make_server()
    client.force_login(UserFactory())
    with django_assert_max_num_queries(8):
        client.get("/")


def test_htmx_request_gets_the_server_table_fragment(client):
    make_server()
    client.force_login(UserFactory())
    response = client.get("/", HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<table id="server-table"')
    assert "<html" not in html


def test_ensureadmin_prints_credentials_once(capsys):
    call_command("ensureadmin")
    first = capsys.readouterr().out
    assert "password" in first
    call_command("ensureadmin")
    second = capsys.readouterr().out
    assert "exists" in second and first.split()[-1] not in second
