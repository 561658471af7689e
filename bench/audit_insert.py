"""CPU per transaction writing 5 audit events: `console.db.insert_many` vs the ORM's `bulk_create`.

Run: `.venv/bin/python bench/audit_insert.py` (PostgreSQL at DATABASE_URL, as bench/lease_throughput.py;
it uses the same throwaway database). A lease request writes 4–10 events in one insert; this is
why it does not use `bulk_create` on PostgreSQL. Last line: one JSON object with
`insert_many_ms_cpu` and `bulk_create_ms_cpu` (process CPU per transaction, round trip included).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lease_throughput as lt

ROUNDS = 500
EVENTS = 5


def _cpu_ms(fn) -> float:
    fn()
    start = time.process_time()
    for _ in range(ROUNDS):
        fn()
    return (time.process_time() - start) / ROUNDS * 1000


def main() -> int:
    base = os.environ.get("DATABASE_URL", lt.DEFAULT_URL)
    url = lt._create_db(base)
    try:
        lt._setup_django(url)
        from django.db import transaction

        from console.db import insert_many
        from console.models import AuditEvent

        def events():
            return [AuditEvent(actor_text="bench", source="api", verb="fleet.gpu.reserved", target_type="fleet.gpu",
                               target_id=str(i), target_repr=f"bench/gpu{i}", parent_type="tenants.lease",
                               parent_id="1", before={"state": "free"}, after={"state": "reserved", "current_lease": 1})
                    for i in range(EVENTS)]

        def with_insert_many():
            with transaction.atomic():
                insert_many(events())

        def with_bulk_create():
            with transaction.atomic():
                AuditEvent.objects.bulk_create(events())

        figures = {"insert_many_ms_cpu": round(_cpu_ms(with_insert_many), 3),
                   "bulk_create_ms_cpu": round(_cpu_ms(with_bulk_create), 3), "events": EVENTS, "rounds": ROUNDS}
        print(f"{EVENTS} audit events per transaction, {ROUNDS} transactions each: insert_many "
              f"{figures['insert_many_ms_cpu']} ms CPU, bulk_create {figures['bulk_create_ms_cpu']} ms CPU")
        print(json.dumps(figures))
        return 0
    finally:
        from django.db import connections

        connections.close_all()
        lt._drop_db(base)


if __name__ == "__main__":
    sys.exit(main())
