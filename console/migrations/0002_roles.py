"""The roles: groups viewer / support / admin with the console's permissions (console/roles.py)."""

from django.db import migrations, models


def create_roles(apps, schema_editor):
    from console.roles import ensure_groups

    ContentType = apps.get_model("contenttypes", "ContentType")
    content_type, _ = ContentType.objects.get_or_create(app_label="console", model="operation")
    ensure_groups(apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"), content_type)


class Migration(migrations.Migration):
    dependencies = [
        ("console", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="operation",
            options={
                "ordering": ["-created_at", "-id"],
                "permissions": [
                    ("view_console", "Can read the operator console (fleet map, servers, audit)"),
                    ("operate_fleet", "Can run support actions (cordon, drain, scrub, re-level, clear quarantine)"),
                    ("administer_console", "Can administer the console (simulator controls, tenant tokens)"),
                ],
            },
        ),
        migrations.AlterField(
            model_name="operation",
            name="status",
            field=models.CharField(
                choices=[("pending", "Pending"), ("running", "Running"), ("succeeded", "Succeeded"),
                         ("failed", "Failed"), ("cancelled", "Cancelled")],
                default="pending", max_length=16,
            ),
        ),
        migrations.RunPython(create_roles, migrations.RunPython.noop),
    ]
