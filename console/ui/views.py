"""Operator UI views: thin, reading through selectors."""

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render

from fleet.selectors import server_overview
from fleet.states import GpuState


@login_required
def fleet_overview(request):
    servers = server_overview()
    template = "console/fleet_overview.html#server-table" if request.htmx else "console/fleet_overview.html"
    return render(request, template, {"servers": servers, "gpu_states": GpuState.values})


def healthz(request):
    return JsonResponse({"ok": True})
