"""OpenAPI as a gate: the schema validates with no warning, documents every API route and the Problem
answers of every operation, and the API's real answers conform to it. The docs are served offline."""

import copy
import re
from io import StringIO

import jsonschema
import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator

from tests.api.conftest import seed_payload
from tests.factories import make_server

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def test_spectacular_validate_fail_on_warn(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"),
                 stdout=StringIO())


def _api_routes(resolver=None, prefix=""):
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _api_routes(entry, route)
        elif isinstance(entry, URLPattern) and route.startswith("api/v1/"):
            yield "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{" + ("id" if m[1] == "pk" else m[1]) + "}", route)


def test_every_route_and_error_is_documented(schema):
    routes = set(_api_routes())
    assert routes and routes <= set(schema["paths"]), routes - set(schema["paths"])
    assert "Problem" in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in operations.items():
            for code in ("400", "401", "403", "404", "429", "500"):
                content = operation["responses"][code]["content"]
                assert content["application/problem+json"]["schema"]["$ref"] == "#/components/schemas/Problem", (
                    path, method, code)


def _jsonschema(node):
    """OpenAPI 3.0 `nullable` as JSON Schema."""
    if isinstance(node, list):
        return [_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _jsonschema(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if "type" in node:
            node["type"] = [node["type"], "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


def _validate(schema, path, method, response):
    operation = schema["paths"][path][method]
    answer = operation["responses"].get(str(response.status_code)) or operation["responses"]["default"]
    content_type = response["Content-Type"].split(";")[0]
    assert content_type in answer["content"], (path, method, response.status_code, content_type)
    body_schema = answer["content"][content_type]["schema"]
    document = _jsonschema({**copy.deepcopy(body_schema), "components": schema["components"]})
    jsonschema.validate(response.json(), document)


def test_answers_conform_to_the_schema(schema, callers, tasks):
    make_server()
    landon, support = callers["tenant_a"], callers["support"]
    created = landon.post("/api/v1/containers", seed_payload(gpus=2))
    _validate(schema, "/api/v1/containers", "post", created)
    lease = created.json()["id"]
    _validate(schema, "/api/v1/containers", "post", landon.post("/api/v1/containers", seed_payload(gpus=3)))
    _validate(schema, "/api/v1/containers", "post", callers["tenant_b"].post("/api/v1/containers", seed_payload()))
    _validate(schema, "/api/v1/leases", "get", landon.get("/api/v1/leases"))
    _validate(schema, "/api/v1/leases/{id}", "get", landon.get(f"/api/v1/leases/{lease}"))
    _validate(schema, "/api/v1/leases/{id}", "get", callers["tenant_b"].get(f"/api/v1/leases/{lease}"))
    _validate(schema, "/api/v1/tenancies/{name}", "get", landon.get("/api/v1/tenancies/landon"))
    _validate(schema, "/api/v1/me", "get", landon.get("/api/v1/me"))
    _validate(schema, "/api/v1/me", "get", support.get("/api/v1/me"))
    for name in ("servers", "gpus", "partitions", "allocations", "events", "operations"):
        _validate(schema, f"/api/v1/{name}", "get", support.get(f"/api/v1/{name}"))
    _validate(schema, "/api/v1/servers", "get", callers["anonymous"].get("/api/v1/servers"))
    server = support.get("/api/v1/servers").json()["results"][0]["id"]
    preview = support.post(f"/api/v1/servers/{server}/cordon/", {"dry_run": True})
    _validate(schema, "/api/v1/servers/{id}/cordon/", "post", preview)
    done = support.post(f"/api/v1/servers/{server}/cordon/", {"preview_token": preview.json()["token"]})
    _validate(schema, "/api/v1/servers/{id}/cordon/", "post", done)
    _validate(schema, "/api/v1/operations/{id}", "get", support.get(f"/api/v1/operations/{done.json()['id']}"))
    _validate(schema, "/api/v1/leases/{id}", "delete", landon.delete(f"/api/v1/leases/{lease}"))


def test_docs_are_served_without_a_cdn(client):
    for page in ("/api/docs/", "/api/redoc/"):
        html = client.get(page).content.decode()
        assert not re.findall(r'(?:src|href)="(?:https?:)?//', html), page  # no fonts, scripts or icons from outside
        assets = re.findall(r'(?:src|href)="(/(?:static|api)/[^"]+\.(?:js|css|png|svg))"', html)
        assert assets, page
        for asset in assets:
            assert client.get(asset).status_code == 200, asset


def test_redocs_bundle_names_no_outside_address(client):
    """The sidecar's bundle loads the Redocly logo from cdn.redoc.ly; ours is the same bundle without it."""
    answer = client.get("/api/redoc/redoc.standalone.js")
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/javascript")
    assert b"Redoc" in answer.content and b"cdn.redoc.ly" not in answer.content
    assert b"API docs by Redocly" in answer.content  # the credit stays
    assert client.post("/api/redoc/redoc.standalone.js").status_code == 405


def test_favicon_ico_is_the_consoles_icon(client):
    answer = client.get("/favicon.ico")
    assert answer.status_code == 301 and answer["Location"] == "/static/console/favicon.svg"
