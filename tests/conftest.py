"""Suite-wide test set-up: settings from the environment, database-pass selection, markers."""

import os
import shutil
import tempfile

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
    if item.get_closest_marker("anydb"):
        return False
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


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """SQLite tests run on a file, in WAL mode, as the embedded default does (settings), not on
    pytest-django's in-memory database: there, with the shared cache every thread needs, a writer
    that meets another thread's write fails at once ("database table is locked", SQLITE_LOCKED,
    which no busy timeout waits out) where a file makes it wait. Threads write beside the test (the
    node watcher, the browser tests' server): a loaded run failed that way. On tmpfs where there is
    one, so commits cost no disk flush."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        yield
        return
    folder = tempfile.mkdtemp(prefix="gpuconsole-tests-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    database.setdefault("TEST", {})["NAME"] = os.path.join(folder, "test.sqlite3")
    yield
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's, and at its end no session left on a PostgreSQL test database: a thread or
    subprocess of some test that still holds a connection there made dropping it fail ("is being
    accessed by other users"), and the database stayed behind, run after run."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    connection.close()


@pytest.fixture(autouse=True)
def _fresh_placement_index(monkeypatch, request):
    """Each test starts on its own database state: the process's placement index must not carry
    servers over from the last one. Tests also set up states with direct row updates, which the
    index cannot notice: a refusal always reads the fleet again (in production, not within 50 ms)."""
    from fleet import placement_live
    from fleet.placement_live import live_index

    monkeypatch.setattr(placement_live, "NOFIT_RELOAD_AFTER_S", 0.0)
    monkeypatch.setattr(live_index, "salt", 0)  # equal servers in id order, as tests expect
    if "transactional_db" not in request.fixturenames:
        # Under `db` the test's transaction never commits, so a claim would stay "in flight" (shown
        # taken after every read of the fleet) for good: end it at once, as its commit would.
        monkeypatch.setattr(live_index, "done", lambda decision: live_index._finish(decision.token))
    live_index.reset()
    yield
    live_index.reset()


@pytest.fixture
def tasks(monkeypatch, request):
    """Capture what services enqueue; the test drains it with `tasks.run()`, like a worker would.

    Under `db` (one transaction that never commits) on_commit never fires, so tasks are queued at
    once; under `transactional_db` the real on_commit runs."""
    from console import dispatch
    from fleet import holders
    from tests.support.tasks import TaskQueue

    queue = TaskQueue()
    monkeypatch.setattr(dispatch, "enqueue", queue.enqueue)
    if "transactional_db" not in request.fixturenames:
        monkeypatch.setattr(dispatch, "on_commit", queue.enqueue)
        monkeypatch.setattr(holders, "notify_on_commit", holders._call)
        monkeypatch.setattr(holders, "capacity_freed_on_commit", holders._capacity_freed)
    return queue
