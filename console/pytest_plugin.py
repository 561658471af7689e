"""Loaded with `-p console.pytest_plugin` before pytest-django reads settings.

The suite runs with DEBUG off, like production, so settings need a SECRET_KEY and ALLOWED_HOSTS;
test-only values are supplied here unless the environment sets them. Tasks that a test sends
without the `tasks` fixture go to an in-memory broker: never into a developer's var/ queue or Redis,
where a running worker would pick them up against its own database.

Under pytest-xdist (`make test` runs two workers) pytest-django gives each worker its own test
database; here each also gets its own var/ (the embedded default's file locks: one worker's
reconciler pass must not make the other's skip) and its own Redis database (channel-layer groups,
the cache's throttle counters).
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("SECRET_KEY", "test-only-secret")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")

_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw"):
    _n = int(_worker[2:])
    _var = os.environ.get("VAR_DIR") or str(Path(__file__).resolve().parent.parent / "var")
    os.environ["VAR_DIR"] = str(Path(_var) / f"test-{_worker}")
    if os.environ.get("REDIS_URL"):
        # Databases 8-15, one a worker: 0-7 stay for a developer's console and the crash test's own (7).
        os.environ["REDIS_URL"] = urlsplit(os.environ["REDIS_URL"])._replace(path=f"/{8 + _n % 8}").geturl()
