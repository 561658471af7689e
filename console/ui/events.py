"""The events page (the audit log, filtered, newest first, live) and one correlation id's life.

Thin: the filters and keyset pages are console/events.py; this parses the GET form, finds each
row's object page (one query per kind of fleet object on the page) and renders. The websocket
consumer adds the new rows that match the page's filters to its top.
"""

from __future__ import annotations

from datetime import UTC
from html import escape
from urllib.parse import quote, urlencode

from channels.db import database_sync_to_async
from django import forms
from django.apps import apps
from django.shortcuts import render
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET

from console import events, relay
from console.models import Source
from console.ui.consumers import LiveConsumer
from console.ui.permissions import VIEW, require
from fleet.selectors import server_ids_of

# Objects whose page is their server's page (found through their server).
ON_A_SERVER = ("fleet.gpu", "fleet.partition", "fleet.allocation", "fleet.nvswitch")
EVENTS_URL = "/events/"  # the page's path (console/ui/urls.py), spelled once per row
LIVE_ROWS_MAX = 200  # rows a live first page keeps (older ones drop off; the Older link follows)


def _ids(value: str, name: str) -> str:
    value = value.strip()
    if value and not value.isdigit():
        raise forms.ValidationError(f"{name} must be a whole number, e.g. 42.")
    return value


class EventFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=150, help_text="user or component, exactly")
    verb = forms.CharField(required=False, max_length=100,
                           help_text="exact, or a prefix ending in “.” (fleet.gpu.) or “*”")
    target_type = forms.CharField(required=False, max_length=50, label="Object type",
                                  widget=forms.TextInput(attrs={"list": "object-types", "placeholder": "fleet.server"}))
    target_id = forms.CharField(required=False, max_length=20, label="Object id",
                                widget=forms.TextInput(attrs={"inputmode": "numeric", "size": 6}))
    source = forms.ChoiceField(required=False, choices=[("", "any"), *Source.choices])
    since = forms.DateTimeField(required=False, label="From (UTC)",
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 1}))
    until = forms.DateTimeField(required=False, label="To (UTC)",
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 1}))
    correlation = forms.CharField(required=False, max_length=64, label="Correlation id")
    before = forms.CharField(required=False, widget=forms.HiddenInput)

    def clean_target_id(self) -> str:
        return _ids(self.cleaned_data["target_id"], "Object id")

    def clean_before(self) -> int | None:
        value = _ids(self.cleaned_data["before"], "The page marker (before)")
        return int(value) if value else None

    def clean(self):
        data = super().clean()
        if data.get("target_id") and not data.get("target_type"):
            self.add_error("target_type", "Give the object's type with its id (e.g. fleet.server).")
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            self.add_error("until", "“To” must be after “From”.")
        return data

    def event_filter(self) -> events.EventFilter:
        d = self.cleaned_data
        return events.EventFilter(
            actor=d["actor"].strip(), verb=d["verb"].strip(), target_type=d["target_type"].strip(),
            target_id=d["target_id"], source=d["source"], since=d["since"], until=d["until"],
            correlation=d["correlation"].strip())


def object_urls(rows) -> dict[int, str]:
    """Each event's object page, where there is one: one query per kind of fleet object on the page."""
    on_server: dict[str, list[str]] = {}
    for e in rows:
        if e.target_type in ON_A_SERVER:
            on_server.setdefault(e.target_type, []).append(e.target_id)
    servers = {kind: server_ids_of(kind, ids) for kind, ids in on_server.items()}
    urls = {}
    for e in rows:
        url = None
        if e.target_type == "fleet.server":
            url = reverse("server-detail", args=[int(e.target_id)]) if e.target_id.isdigit() else None
        elif e.target_type in ON_A_SERVER:
            server_id = servers[e.target_type].get(e.target_id)
            url = reverse("server-detail", args=[server_id]) if server_id else None
        elif e.target_type == "tenants.lease":
            url = f"/leases/{quote(e.target_id)}/"
        elif e.parent_type == "tenants.lease":  # a boot phase: its lease
            url = f"/leases/{quote(e.parent_id)}/"
        elif e.target_type == "tenants.tenant":
            url = f"/tenants/{quote(e.target_repr)}/"  # a tenant's repr is its name
        if url:
            urls[e.pk] = url
    return urls


def change(before: dict, after: dict, limit: int = 160) -> str:
    """`state: free → reserved, holder: lease/7` (what a row changed, short)."""
    parts = []
    for key in sorted(set(before) | set(after)):
        if key in before and key in after and before[key] != after[key]:
            parts.append(f"{key}: {before[key]} → {after[key]}")
        elif key in after and key not in before:
            parts.append(f"{key}: {after[key]}")
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_row(e, url: str | None, *, fresh: bool = False) -> str:
    """One event's table row. A function rather than a template partial: Django's template engine
    takes about 2 ms a row (50 rows: most of the page's time at a million events), this 0.05 ms. The
    page and the live rows (EventsConsumer) both call it."""
    at = e.at.astimezone(UTC)
    repr_ = escape(e.target_repr)
    obj = f'<a href="{escape(url)}">{repr_}</a>' if url else repr_
    narrow = escape(f"{EVENTS_URL}?{urlencode({'target_type': e.target_type, 'target_id': e.target_id})}")
    what = escape(change(e.before or {}, e.after or {}))
    if what:
        what = f'<span class="chg">{what}</span>'
    if e.message:
        what += ("<br>" if what else "") + escape(e.message)
    if e.correlation_id:
        cid = escape(e.correlation_id)
        corr = (f'<a href="{EVENTS_URL}correlation/{quote(e.correlation_id)}/" title="Everything under {cid}, '
                f'oldest first"><code>{cid[:8]}…</code></a>')
    else:
        corr = "—"
    cls = ' class="fresh"' if fresh else ""
    return (
        f'<tr id="event-{e.pk}" data-id="{e.pk}"{cls}>'
        f'<td><time datetime="{at.isoformat()}">{at:%Y-%m-%d %H:%M:%S}</time></td>'
        f'<td><a href="{EVENTS_URL}?actor={quote(e.actor_text)}">{escape(e.actor_text)}</a> '
        f'<small class="src">{escape(e.source)}</small></td>'
        f'<td><a href="{EVENTS_URL}?verb={quote(e.verb)}" class="verb">{escape(e.verb)}</a></td>'
        f'<td>{obj} <a class="obj-filter" href="{narrow}" aria-label="Only events of {repr_}">⌕</a></td>'
        f"<td>{what}</td><td>{corr}</td></tr>"
    )


def render_rows(rows, *, fresh: bool = False) -> SafeString:
    urls = object_urls(rows)
    # every value is escaped in render_row
    return mark_safe("".join(render_row(e, urls.get(e.pk), fresh=fresh) for e in rows))


def _object_types() -> list[str]:
    labels = (m._meta.label_lower for m in apps.get_models())
    return sorted(label for label in labels if label.split(".")[0] in ("fleet", "tenants", "console"))


def _query(data: dict, **changes) -> str:
    params = {k: v for k, v in data.items() if v and k != "before"}
    params.update({k: v for k, v in changes.items() if v})
    return urlencode(params)


@require_GET
@require(VIEW)
def events_page(request):
    form = EventFilterForm(request.GET)
    ctx = {"form": form, "object_types": _object_types(), "rows": [], "page": None}
    if not form.is_valid():
        return render(request, "console/events.html", ctx, status=400)
    f = form.event_filter()
    version = relay.latest_id()  # before the page: a row committed while it renders arrives live
    page = events.events_page(f, before=form.cleaned_data["before"])
    raw = {k: request.GET.get(k, "") for k in form.fields}
    ctx.update(
        page=page, rows=render_rows(page.events), version=version, filtered=not f.is_empty(),
        older_query=_query(raw, before=page.older) if page.older else None,
        newest_query=_query(raw),
        live_path="/ws/events/" + (f"?{q}" if (q := _query(raw)) else ""),
    )
    template = "console/events.html#events-table" if request.htmx else "console/events.html"
    return render(request, template, ctx)


@require_GET
@require(VIEW)
def correlation_page(request, correlation_id: str):
    after = request.GET.get("after", "").strip()
    error = None
    if after and not after.isdigit():
        error, after = "The page marker (after) must be a whole number.", ""
    life = events.correlation_life(correlation_id, after=int(after) if after else None)
    ctx = {"life": life, "rows": render_rows(life.events), "error": error}
    if life.events:
        ctx["took"] = _duration((life.events[-1].at - life.events[0].at).total_seconds())
        ctx["objects"] = sorted({e.target_repr for e in life.events})
        ctx["actors"] = sorted({e.actor_text for e in life.events})
    return render(request, "console/correlation.html", ctx, status=400 if error else 200)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class EventsConsumer(LiveConsumer):
    """The events page's first page: the new events that match its filters, as rows for its top.
    The relay sends every event to `events`; the consumer reads which of them match (one query)."""

    page_groups = [events.EVENTS_GROUP]

    def setup(self) -> bool:
        from urllib.parse import parse_qsl

        form = EventFilterForm(dict(parse_qsl(self.scope.get("query_string", b"").decode())))
        if not form.is_valid() or form.cleaned_data["before"]:
            return False  # only a valid first page is live
        self.filter = form.event_filter()
        return True

    def collect(self, event: dict) -> None:
        self.pending.add(event["id"])

    async def render_pending(self, pending: set) -> dict[str, str]:
        html = await database_sync_to_async(self.render_rows)(sorted(pending))
        if html:
            await self.send_json({"type": "rows", "v": self.version, "into": "events-rows",
                                  "keep": LIVE_ROWS_MAX, "html": html})
        return {}  # sent as a `rows` message (live.js inserts them in id order), not fragments

    def render_rows(self, ids: list[int]) -> str:
        return str(render_rows(events.events_by_id(self.filter, ids, size=LIVE_ROWS_MAX), fresh=True))
