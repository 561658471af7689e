"""The console project. Loading the Celery app here makes every process that loads Django (web,
management commands, tests) send tasks through the configured broker, not Celery's default."""

from console.celery import app as celery_app

__all__ = ("celery_app",)
