"""The one definition of how a server's tile and its GPU cells look on the fleet map.

Written as a function rather than a template: a 1,000-server map is 8,000 cells, which Django's
template engine renders in over a second, this in a few milliseconds. The page (views) and the live
updates (consumers) both call it, so a pushed tile is exactly what a reload would show. Cells carry
no htmx attributes and no ids: the map listens once (console/static/console/live.js), and a cell is
addressed by its tile and position (module order).

    <a id="server-12" class="t s-cordoned w-q" href="/servers/12/"
       aria-label="srv-0412: 0/8 GPUs available, cordoned 3 minutes, worst GPU quarantined">
      srv-0412⏎<b class="ss">cordoned 3 minutes</b><b class="ws">quarantined</b>
      <i class="u" data-t="acme">A</i><i class="q"></i>…</a>

Nine elements a server (the tile is the server's link; a newline, not an element, puts the cells
under the host name), so 1,000 servers stay under 10,000 elements.

(A cell's lease, temperature and last Xid are in its card, fetched on hover, focus or Enter.)
"""

from __future__ import annotations

from html import escape

from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince

from fleet.overview import STATE_CODE, ServerTile, tenant_mark

# (state, overdue, tenant, holder) -> the cell's markup: a fleet has few distinct cells.
_CELLS: dict[tuple, str] = {}


def render_cell(cell) -> str:
    key = (cell.state, cell.overdue, cell.tenant, cell.holder)
    html = _CELLS.get(key)
    if html is None:
        code = STATE_CODE[cell.state]
        cls = f"{code} od" if cell.overdue else code
        if cell.tenant:
            html = f'<i class="{cls}" data-t="{escape(cell.tenant)}">{escape(tenant_mark(cell.tenant))}</i>'
        else:
            html = f'<i class="{cls}"></i>'
        if len(_CELLS) > 50_000:
            _CELLS.clear()
        _CELLS[key] = html
    return html


def render_tile(tile: ServerTile) -> SafeString:
    classes = f"t s-{tile.state}"
    if tile.worst_code:
        classes += f" w-{tile.worst_code}"
    if tile.overdue:
        classes += " od"
    host = escape(tile.hostname)
    label = f"{host}: {tile.available}/{len(tile.gpus)} GPUs available"
    badges = ""
    if tile.state != "active":
        since = f" {timesince(tile.since)}" if tile.since else ""
        badges += f'<b class="ss">{tile.state}{since}</b>'
        label += f", {tile.state}{since}"
    if tile.worst_notable:
        badges += f'<b class="ws">{tile.worst_notable}</b>'
        label += f", worst GPU {tile.worst_notable}"
    cells = "".join([render_cell(c) for c in tile.gpus])
    return mark_safe(  # every interpolated text is escaped above
        f'<a id="server-{tile.pk}" class="{classes}" href="/servers/{tile.pk}/" aria-label="{label}">'
        f"{host}\n{badges}{cells}</a>"
    )


def render_tiles(tiles: list[ServerTile]) -> SafeString:
    return mark_safe("".join(render_tile(t) for t in tiles))  # each tile escapes its text
