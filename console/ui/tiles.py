"""The one definition of how a server's tile and its GPU cells look on the fleet map.

Written as a function rather than a template: a 1,000-server map is 8,000 cells, which Django's
template engine renders in over a second, this in a few milliseconds. The page (views) and the live
updates (consumers) both call it, so a pushed tile is exactly what a reload would show. Cells carry
no htmx attributes and no ids: the map listens once (console/static/console/live.js), and a cell is
addressed by its tile and position (module order).

    <a id="server-12" class="t s-draining w-s" href="/servers/12/" data-c="61 60 - 58 59 61 60 62"
       aria-label="srv-0412: 0/8 GPUs available, draining 3 min, worst GPU scrubbing 4 min">
      srv-0412⏎<b class="ss" data-s="1764412345" data-o="3600">draining 3 min</b>
      <b class="ws" data-s="1764412290" data-o="900">scrubbing 4 min</b>
      <i class="u" data-t="acme" data-l="42">A</i><i class="u">A</i><i class="s" data-s="…" data-o="900"></i>…</a>

Nine elements a server (the tile is the server's link; a newline, not an element, puts the cells
under the host name), so 1,000 servers stay under 10,000 elements.

Every cell's accessible name ("srv-0412 GPU 3: in use, acme, lease 42, 61 °C, last Xid 79") is
computed by live.js from compact data, because 8,000 spelled-out labels would be 450 KB: the state is
the class, tenant and lease (`data-t`, `data-l`) are on the first cell of each holder's run (the
cells after it have the same holder until the next run starts), temperatures are one `data-c` on the
tile, an Xid is `data-x` on its cell. Anything timed (a transitional GPU state, a booting lease, a
draining server) carries `data-s` (since, epoch seconds) and `data-o` (its limit in seconds): one
client clock ticks the times and marks what is overdue; the server-rendered text and `od` classes
are the no-JavaScript fallback.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from fleet.overview import STATE_CODE, GpuCell, ServerTile, tenant_mark

# (state, overdue, tenant, holder if its run starts here, xid) -> the cell's markup: a fleet has few
# distinct cells (timed ones, which carry their own since, are not cached).
_CELLS: dict[tuple, str] = {}
BOOTING = "booting"


def duration(seconds: float) -> str:
    """"<1 min", "4 min", "2 h 5 min", "3 d 4 h" (live.js's `dur` says the same)."""
    m = int(seconds // 60)
    if m < 1:
        return "<1 min"
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def _timed(since: datetime | None, limit_s: int | None) -> str:
    if since is None:
        return ""
    return f' data-s="{int(since.timestamp())}" data-o="{limit_s or 0}"'


def _lease_ref(holder: str) -> str:
    """`lease/42` → `42` (live.js reads a bare number as a lease); any other holder as it is."""
    return holder[6:] if holder.startswith("lease/") else holder


def render_cell(cell: GpuCell, run_start: bool = True) -> str:
    timed = cell.since is not None
    key = (cell.state, cell.overdue, cell.phase, cell.tenant, cell.holder if run_start else "", cell.last_xid)
    html = None if timed else _CELLS.get(key)
    if html is None:
        cls = STATE_CODE[cell.state]
        if cell.phase == BOOTING:
            cls += " bt"
        if cell.overdue:
            cls += " od"
        attrs = ""
        if cell.tenant and run_start:
            attrs += f' data-t="{escape(cell.tenant)}"'
            if cell.holder:
                attrs += f' data-l="{escape(_lease_ref(cell.holder))}"'
        if cell.last_xid:
            attrs += f' data-x="{int(cell.last_xid)}"'
        attrs += _timed(cell.since, cell.limit_s)
        html = f'<i class="{cls}"{attrs}>{escape(tenant_mark(cell.tenant)) if cell.tenant else ""}</i>'
        if not timed:
            if len(_CELLS) > 50_000:
                _CELLS.clear()
            _CELLS[key] = html
    return html


def _cells(gpus: list[GpuCell]) -> str:
    out, previous = [], None
    for c in gpus:
        out.append(render_cell(c, run_start=(c.tenant, c.holder) != previous))
        previous = (c.tenant, c.holder) if c.tenant else None
    return "".join(out)


def _temps(gpus: list[GpuCell]) -> str:
    return " ".join("-" if c.temperature_c is None else str(round(c.temperature_c)) for c in gpus)


def _oldest(cells: list[GpuCell]) -> GpuCell | None:
    timed = [c for c in cells if c.since is not None]
    return min(timed, key=lambda c: c.since) if timed else None


def render_tile(tile: ServerTile) -> SafeString:
    classes = f"t s-{tile.state}"
    if tile.worst_code:
        classes += f" w-{tile.worst_code}"
    if tile.overdue:
        classes += " od"
    now = timezone.now()
    host = escape(tile.hostname)
    label = f"{host}: {tile.available}/{len(tile.gpus)} GPUs available"
    badges = ""
    if tile.state != "active":
        since = f" {escape(duration((now - tile.since).total_seconds()))}" if tile.since else ""
        overdue = " od" if tile.overdue else ""
        badges += f'<b class="ss{overdue}"{_timed(tile.since, tile.limit_s)}>{tile.state}{since}</b>'
        label += f", {tile.state}{since}{', overdue' if tile.overdue else ''}"
    # The worst GPU state (or, when nothing is worse, a booting lease), timed by its oldest GPU.
    worst = tile.worst_notable
    cells = [c for c in tile.gpus if c.state == worst] if worst else [c for c in tile.gpus if c.phase == BOOTING]
    if cells:
        what = worst or BOOTING
        oldest = _oldest(cells)
        since = f" {escape(duration((now - oldest.since).total_seconds()))}" if oldest else ""
        overdue = oldest is not None and any(c.overdue for c in cells)
        attrs = _timed(oldest.since, oldest.limit_s) if oldest else ""
        badges += f'<b class="ws{" od" if overdue else ""}"{attrs}>{what}{since}</b>'
        label += f", {'worst GPU ' if worst else ''}{what}{since}{', overdue' if overdue else ''}"
    return mark_safe(  # every interpolated text is escaped above
        f'<a id="server-{tile.pk}" class="{classes}" href="/servers/{tile.pk}/" aria-label="{label}" '
        f'data-c="{_temps(tile.gpus)}">{host}\n{badges}{_cells(tile.gpus)}</a>'
    )


def mark_booting(tiles: list[ServerTile]) -> list[ServerTile]:
    """Mark the GPUs of leases that are booting (one query): their phase, since and limit (the pod's
    start-up timeout), overdue past it. Fleet's tiles know holders, not leases; this layer knows both."""
    from tenants.selectors import booting_holders

    if not any(c.holder for t in tiles for c in t.gpus):
        return tiles
    booting = booting_holders([t.pk for t in tiles] if len(tiles) < 100 else None)
    if not booting:
        return tiles
    now = timezone.now()
    for t in tiles:
        for c in t.gpus:
            hit = booting.get(c.holder) if c.holder else None
            if hit is not None and c.since is None:
                c.phase, c.since, c.limit_s = BOOTING, hit[0], hit[1]
                c.overdue = bool(hit[0] and (now - hit[0]).total_seconds() > hit[1])
    return tiles


def render_tiles(tiles: list[ServerTile]) -> SafeString:
    return mark_safe("".join(render_tile(t) for t in tiles))  # each tile escapes its text
