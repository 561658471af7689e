"""Operator UI pages: the fleet map, a server's page, a GPU's card. Thin: they read through
fleet.overview and render templates whose partials the websocket consumers render too."""

from dataclasses import asdict

from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console.models import Operation
from console.ui.permissions import VIEW, require
from console.ui.tiles import mark_booting, render_tile, render_tiles
from fleet.models import Gpu, Server
from fleet.overview import HEALTH_CHOICES, Filters, fleet_map, server_detail, server_tiles
from fleet.states import GpuState, ServerState
from hardware.platforms import PLATFORMS


def map_context(filters: Filters) -> dict:
    data = fleet_map(filters)
    mark_booting([t for _, tiles in data.racks for t in tiles])
    return {
        "map": data,
        "racks": [(rack, len(tiles), render_tiles(tiles)) for rack, tiles in data.racks],
        "capacity": data.capacity,
        "filters": filters,
        "filter_query": "&".join(f"{k}={v}" for k, v in asdict(filters).items() if v),
        "gpu_states": GpuState.choices,
        "server_states": ServerState.choices,
        "platforms": [(k, p.name) for k, p in PLATFORMS.items()],
        "health_choices": list(HEALTH_CHOICES.items()),
    }


@require_GET
@require(VIEW)
def fleet_overview(request):
    g = request.GET
    filters = Filters(state=g.get("state", ""), tenant=g.get("tenant", ""), platform=g.get("platform", ""),
                      health=g.get("health", ""), q=g.get("q", "").strip())
    template = "console/fleet_map.html#fleet-map" if request.htmx else "console/fleet_map.html"
    return render(request, template, map_context(filters))


@require_GET
@require(VIEW)
def server_page(request, pk: int):
    try:
        detail = server_detail(pk)
    except Server.DoesNotExist as exc:
        raise Http404("no such server") from exc
    return render_page_or_part(request, "console/server_detail.html", SERVER_PARTS, {"d": detail})


def render_page_or_part(request, template: str, parts: tuple[str, ...], context: dict):
    """The whole page, or (htmx, `?part=NAME`) one of its named partials, which the live consumers
    render too."""
    part = request.GET.get("part")
    if request.htmx and part in parts:
        return render(request, f"{template}#{part}", context)
    return render(request, template, context)


SERVER_PARTS = ("server-header", "server-partitions", "server-gpus", "server-history", "server-operations")


@require_GET
@require(VIEW)
def server_tile(request, pk: int):
    tiles = mark_booting(server_tiles([pk]))
    if not tiles:
        raise Http404("no such server")
    return HttpResponse(render_tile(tiles[0]))


@require_GET
@require(VIEW)
def gpu_card(request, pk: int, module_id: int):
    """A GPU's details in place (the map's hover/focus card and Enter), with its actions."""
    gpu = Gpu.objects.select_related("server").filter(server_id=pk, module_id=module_id).first()
    if gpu is None:
        raise Http404("no such GPU")
    detail = server_detail(pk, history=0)
    row = next(r for r in detail.gpus if r.gpu.pk == gpu.pk)
    return render(request, "console/gpu_card.html", {"row": row, "server": detail.server})


@require_GET
@require(VIEW)
def operation_fragment(request, pk: int):
    """An operation's progress; htmx polls it every second and stops on 286 once it is done."""
    op = Operation.objects.filter(pk=pk).first()
    if op is None:
        raise Http404("no such operation")
    response = render(request, "console/operation.html", {"op": op})
    if op.done and request.htmx:
        response.status_code = 286
    return response


def healthz(request):
    return JsonResponse({"ok": True})
