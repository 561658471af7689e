"""The workload generator's beat tick (settings.CELERY_BEAT_SCHEDULE, every WORKLOAD_TICK_S)."""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task


@shared_task
def generator_tick() -> dict:
    from simcontrol.generator import generator_tick as tick

    return asdict(tick())
