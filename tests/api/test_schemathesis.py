"""schemathesis, in-process over the WSGI app: every operation of the schema with generated data —
no server error, documented status codes, content types and response bodies (the Problem included).
Plus a stateful walk create → get → delete following the Location header."""

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from django.db import transaction
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tenants.api.serializers import _ENV_NAME
from tenants.states import TenantState
from tenants.tokens import api_token_create
from tests.factories import TenantFactory
from tests.factories.fleet import TEST_ACTOR

pytestmark = [pytest.mark.django_db, pytest.mark.slow, pytest.mark.anydb]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """The WSGI handler closes old connections at each request's start and end; inside the test's
    transaction that would close it (Django's test Client disconnects the same handlers)."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def tokens(db, tasks):
    from tests.factories import make_server

    make_server()
    tenant = TenantFactory(name="landon", state=TenantState.READY, gpu_quota=10_000)
    user = get_user_model().objects.create(username="op-support")
    user.groups.add(Group.objects.get_or_create(name="support")[0])
    return {"tenant": api_token_create(actor=TEST_ACTOR, tenant=tenant)[1],
            "operator": api_token_create(actor=TEST_ACTOR, user=user)[1]}


def _token_for(case, tokens) -> str:
    tenant_paths = ("/api/v1/containers", "/api/v1/leases", "/api/v1/tenancies", "/api/v1/me")
    return tokens["tenant"] if case.path.startswith(tenant_paths) else tokens["operator"]


@schema.include(path_regex="^/api/v1/").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation(case, tokens):
    cache.clear()  # throttles: generated calls are many
    case.call_and_validate(headers={"Authorization": f"Bearer {_token_for(case, tokens)}"}, checks=CHECKS)


def test_stateful_create_get_delete(tokens):
    """The links a client follows: POST's Location → GET → DELETE → GET → DELETE, each answer validated
    against the schema (status documented, body conforming)."""
    from django.test import Client
    from drf_spectacular.generators import SchemaGenerator

    from tests.api.test_openapi import _validate

    document = SchemaGenerator().get_schema(request=None, public=True)
    client, auth = Client(), {"HTTP_AUTHORIZATION": f"Bearer {tokens['tenant']}"}
    for gpus in (1, 2, 4, 8, 8):
        created = client.post("/api/v1/containers", {"container-url": "nvcr.io/a/b:1", "tenancy": "landon",
                                                     "gpus": gpus}, content_type="application/json", **auth)
        _validate(document, "/api/v1/containers", "post", created)
        location = created["Location"]
        for method, expected in (("GET", 200), ("DELETE", 202), ("GET", 200), ("DELETE", 202)):
            response = client.generic(method, location, **auth)
            assert response.status_code == expected
            _validate(document, "/api/v1/leases/{id}", method.lower(), response)


def test_stateful_links_schemathesis_infers(tokens):
    """Schemathesis' own state machine over the links it infers from the schema (POST /containers →
    GET/DELETE /leases/{id}, the list → one lease, DELETE → GET): random sequences of calls that carry
    real ids, each answer checked like every operation's."""
    machine = schema.include(path_regex="^/api/v1/(containers|leases)").as_state_machine()
    auth = {"Authorization": f"Bearer {tokens['tenant']}"}

    class LeaseLifecycle(machine):
        # Each generated sequence starts from the same database (Hypothesis replays sequences and
        # expects the same ids back): a savepoint around each one.
        def setup(self):
            self._savepoint = transaction.savepoint()

        def teardown(self):
            transaction.savepoint_rollback(self._savepoint)

        def before_call(self, case):
            cache.clear()  # throttles
            if case.path == "/api/v1/containers" and isinstance(case.body, dict):
                # Bad bodies are test_every_operation's; here creates should mostly succeed, so the
                # chains have leases to follow (command, args, env and limits stay generated).
                case.body.update({"tenancy": "landon", "container-url": "nvcr.io/nvidia/cuda:12.5.0-base"})
                if case.body.get("gpus") not in (1, 2, 4, 8):
                    case.body["gpus"] = 1
                # Generated variable names (the schema cannot say which are valid) and Idempotency-Keys
                # get many creates refused: one run in five made no lease or never followed a link to
                # one. test_every_operation sends them as generated.
                if isinstance(case.body.get("env"), dict):
                    case.body["env"] = {k: v for k, v in case.body["env"].items() if _ENV_NAME.match(k)}
                case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "idempotency-key"}

        def get_call_kwargs(self, case):
            return {"headers": auth}

        def validate_response(self, response, case, additional_checks=(), **kwargs):
            seen.add((case.method, case.operation.path, response.status_code))
            case.validate_response(response, checks=CHECKS)

    seen: set[tuple[str, str, int]] = set()
    LeaseLifecycle.run(settings=settings(max_examples=25, stateful_step_count=6, deadline=None,
                                         suppress_health_check=list(HealthCheck)))
    # The chains reached real leases: a create, then a call on the lease it made through a link.
    assert ("POST", "/api/v1/containers", 202) in seen
    assert {("GET", "/api/v1/leases/{id}", 200), ("DELETE", "/api/v1/leases/{id}", 202)} & seen, seen
