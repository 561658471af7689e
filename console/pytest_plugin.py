"""Loaded with `-p console.pytest_plugin` before pytest-django reads settings.

The suite runs with DEBUG off, like production, so settings need a SECRET_KEY and ALLOWED_HOSTS;
test-only values are supplied here unless the environment sets them. Tasks that a test sends
without the `tasks` fixture go to an in-memory broker: never into a developer's var/ queue or Redis,
where a running worker would pick them up against its own database.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("CELERY_BROKER_URL", "memory://")
