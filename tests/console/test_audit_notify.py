"""PostgreSQL: an audit event wakes the live relays when its transaction commits (the audit table's
trigger, migration console 0005), not before, and a rolled-back one never does."""

import psycopg
import pytest
from django.db import connection, transaction

from console.audit import NOTIFY_CHANNEL, Actor, audit_record
from tests.factories import TenantFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
ACTOR = Actor.system("tests")


def _listener() -> psycopg.Connection:
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    listener = psycopg.connect(**params, autocommit=True)
    listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return listener


def _received(listener: psycopg.Connection) -> int:
    return sum(1 for _ in listener.notifies(timeout=0.5))


def test_a_committed_event_notifies_once_and_a_rolled_back_one_never():
    tenant = TenantFactory()
    listener = _listener()
    try:
        with transaction.atomic():
            audit_record(actor=ACTOR, verb="tests.first", target=tenant)
            audit_record(actor=ACTOR, verb="tests.second", target=tenant)
            assert _received(listener) == 0  # not before the commit
        assert _received(listener) == 1  # one per transaction, however many events
        with pytest.raises(RuntimeError), transaction.atomic():
            audit_record(actor=ACTOR, verb="tests.rolled_back", target=tenant)
            raise RuntimeError
        assert _received(listener) == 0
    finally:
        listener.close()
