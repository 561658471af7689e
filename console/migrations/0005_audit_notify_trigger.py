"""PostgreSQL: every INSERT into the audit log wakes the live relays (console/relay.py) when its
transaction commits, by a statement trigger, instead of a NOTIFY statement sent after each write (a
round trip of every audited request). SQLite has no NOTIFY: its relays poll."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION console_audit_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('console_audit', '');
    RETURN NULL;
END $$;
CREATE TRIGGER console_auditevent_notify AFTER INSERT ON console_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION console_audit_notify();
"""
DROP = """
DROP TRIGGER IF EXISTS console_auditevent_notify ON console_auditevent;
DROP FUNCTION IF EXISTS console_audit_notify();
"""


def _on_postgresql(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("console", "0004_operation_parent")]

    operations = [migrations.RunPython(_on_postgresql(CREATE), _on_postgresql(DROP), elidable=False)]
