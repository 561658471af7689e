"""The Celery app, configured from Django settings (CELERY_* names)."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _freeze_startup_heap(**kwargs) -> None:
    from console.startup import freeze_startup_heap

    freeze_startup_heap()


_bound: dict[str, object] = {}


@task_prerun.connect
def _bind_correlation(task_id=None, task=None, **kwargs) -> None:
    """Run the task under the correlation id it was sent with (console.dispatch), or a new one."""
    from console import correlation

    request = task.request
    cid = getattr(request, correlation.HEADER, None) or (request.headers or {}).get(correlation.HEADER) or ""
    scope = correlation.bound(cid or correlation.new())
    scope.__enter__()
    _bound[task_id] = scope


@task_postrun.connect
def _unbind_correlation(task_id=None, **kwargs) -> None:
    scope = _bound.pop(task_id, None)
    if scope is not None:
        scope.__exit__(None, None, None)
