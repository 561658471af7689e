"""Reading the audit log: the events page's filters and keyset pages, one correlation id's whole
life, and the live relay's `events` group. Infrastructure: imports no app.

Pages are keyset pages on the id, newest first (`id < before ORDER BY id DESC LIMIT n`), never
OFFSET: every page costs one index range scan however deep it is, and rows inserted between two
page fetches neither repeat nor push a row off the next page. Each filter has an index that ends in
`id` (console/migrations/0003), so a filtered page is also one ordered range scan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.db.models import QuerySet

from console.models import AuditEvent

PAGE_SIZE = 50
LIFE_PAGE_SIZE = 500  # one lease's life is a few dozen events; a long-lived request a few hundred
EVENTS_GROUP = "events"

# `at` is stamped when the row is built and the id when it is inserted, so the two orders agree
# except for rows whose writers raced (milliseconds) or whose clocks disagree (NTP: well under a
# second). A time filter is also turned into id bounds taken this far outside it, so that a page
# filtered by time is one range scan on the id (PostgreSQL cannot know that `at` follows `id`, and
# would otherwise walk the id index from the newest row to the oldest of the range: 0.5 s at 1 M
# rows); only a row stamped more than this out of order could be left out.
CLOCK_SKEW = timedelta(minutes=10)


@dataclass(frozen=True)
class EventFilter:
    actor: str = ""  # who, as recorded (a user name or a system component's name): exact
    verb: str = ""  # exact, or a prefix when it ends with "." or "*" (`fleet.gpu.` → every GPU verb)
    target_type: str = ""  # a model label (`fleet.server`)
    target_id: str = ""
    source: str = ""
    since: datetime | None = None  # at ≥ since
    until: datetime | None = None  # at < until
    correlation: str = ""

    def is_empty(self) -> bool:
        return not any(asdict(self).values())

    @property
    def verb_prefix(self) -> str | None:
        if self.verb.endswith("*"):
            return self.verb.rstrip("*")
        if self.verb.endswith("."):
            return self.verb
        return None


def filtered(f: EventFilter) -> QuerySet:
    """The events `f` selects (unordered)."""
    qs = AuditEvent.objects.all()
    if f.actor:
        qs = qs.filter(actor_text=f.actor)
    if f.verb:
        prefix = f.verb_prefix
        qs = qs.filter(verb__startswith=prefix) if prefix is not None else qs.filter(verb=f.verb)
    if f.target_type:
        qs = qs.filter(target_type=f.target_type)
    if f.target_id:
        qs = qs.filter(target_id=f.target_id)
    if f.source:
        qs = qs.filter(source=f.source)
    if f.correlation:
        qs = qs.filter(correlation_id=f.correlation)
    if f.since is not None:
        qs = qs.filter(at__gte=f.since)
        below = (AuditEvent.objects.filter(at__lt=f.since - CLOCK_SKEW).order_by("-at")
                 .values_list("id", flat=True).first())
        if below is not None:
            qs = qs.filter(id__gt=below)
    if f.until is not None:
        qs = qs.filter(at__lt=f.until)
        above = (AuditEvent.objects.filter(at__gte=f.until + CLOCK_SKEW).order_by("at")
                 .values_list("id", flat=True).first())
        if above is not None:
            qs = qs.filter(id__lt=above)
    return qs


@dataclass
class EventPage:
    events: list[AuditEvent]
    older: int | None  # `before=` of the next (older) page, None on the last
    first: bool  # the newest page (live rows are added to it)


def events_page(f: EventFilter, *, before: int | None = None, size: int = PAGE_SIZE) -> EventPage:
    """One page, newest first, of the events `f` selects with an id below `before`."""
    qs = filtered(f)
    if before is not None:
        qs = qs.filter(id__lt=before)
    rows = list(qs.order_by("-id")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return EventPage(events=rows, older=rows[-1].pk if more else None, first=before is None)


def events_by_id(f: EventFilter, ids: list[int], *, size: int = PAGE_SIZE) -> list[AuditEvent]:
    """Which of these events `f` selects, newest first (the live page's new rows)."""
    return list(filtered(f).filter(id__in=ids).order_by("-id")[:size])


@dataclass
class Life:
    correlation_id: str
    events: list[AuditEvent]
    later: int | None  # `after=` of the next page, None on the last


def correlation_life(correlation_id: str, *, after: int | None = None, size: int = LIFE_PAGE_SIZE) -> Life:
    """Everything done under one correlation id (one lease's, one request's life), oldest first."""
    qs = AuditEvent.objects.filter(correlation_id=correlation_id)
    if after is not None:
        qs = qs.filter(id__gt=after)
    rows = list(qs.order_by("id")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Life(correlation_id=correlation_id, events=rows, later=rows[-1].pk if more else None)


def events_group(events: list[dict]) -> dict[int, set[str]]:
    """The live relay's resolver for the events page: every event goes to `events` (the page's
    consumer applies its own filters, reading the database)."""
    return {e["id"]: {EVENTS_GROUP} for e in events}
