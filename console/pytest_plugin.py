"""Loaded with `-p console.pytest_plugin` before pytest-django reads settings.

The suite runs with DEBUG off, like production, so settings need a SECRET_KEY and ALLOWED_HOSTS;
test-only values are supplied here unless the environment sets them.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
