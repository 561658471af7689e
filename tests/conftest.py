"""Suite-wide test set-up: settings from the environment, database-pass selection, markers."""

import os

import pytest
from hypothesis import settings as hypothesis_settings

# CI replays the same examples on every run (a landing must not hinge on a lucky draw); locally every
# run draws new ones, and `STATEFUL_EXAMPLES=40` widens the stateful search.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")

_DB_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback", "live_server"}


def pytest_addoption(parser):
    parser.addoption(
        "--db-only",
        action="store_true",
        help="run only tests that touch the database or services (the PostgreSQL + Redis pass)",
    )


def _uses_database(item) -> bool:
    if item.get_closest_marker("django_db") or item.get_closest_marker("postgres"):
        return True
    if item.get_closest_marker("redis"):
        return True
    return bool(_DB_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    on_postgres = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    with_redis = bool(os.environ.get("REDIS_URL"))
    if config.getoption("--db-only"):
        kept = [i for i in items if _uses_database(i)]
        config.hook.pytest_deselected(items=[i for i in items if not _uses_database(i)])
        items[:] = kept
    for item in items:
        if item.get_closest_marker("postgres") and not on_postgres:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL: the PostgreSQL pass runs it"))
        if item.get_closest_marker("redis") and not with_redis:
            item.add_marker(pytest.mark.skip(reason="needs Redis: the PostgreSQL + Redis pass runs it"))


@pytest.fixture
def tasks(monkeypatch, request):
    """Capture what services enqueue; the test drains it with `tasks.run()`, like a worker would.

    Under `db` (one transaction that never commits) on_commit never fires, so tasks are queued at
    once; under `transactional_db` the real on_commit runs."""
    from fleet import dispatch
    from tests.support.tasks import TaskQueue

    queue = TaskQueue()
    monkeypatch.setattr(dispatch, "enqueue", queue.enqueue)
    if "transactional_db" not in request.fixturenames:
        monkeypatch.setattr(dispatch, "on_commit", queue.enqueue)
    return queue
