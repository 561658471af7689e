"""The operator UI: views, websocket consumers and routes, on top of every app (the import-linter
layers contract in pyproject.toml keeps it there and keeps console's infrastructure below the apps)."""
