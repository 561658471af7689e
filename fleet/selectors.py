"""Reads of the fleet, shaped for the pages and APIs that show them."""

from django.db.models import Count, Prefetch, Q, QuerySet

from fleet.models import Gpu, Server
from fleet.states import GpuState


def server_overview() -> QuerySet[Server]:
    """Every server with its GPUs (in module order) and free-GPU counts, in two queries."""
    return (
        Server.objects.all()
        .prefetch_related(Prefetch("gpus", queryset=Gpu.objects.order_by("module_id")))
        .annotate(
            gpu_total=Count("gpus"),
            gpu_free=Count("gpus", filter=Q(gpus__state=GpuState.FREE)),
        )
        .order_by("rack", "slot")
    )
