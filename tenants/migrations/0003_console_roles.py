"""The console's roles as groups (`viewer`, `support`, `admin`): operator API tokens and sessions are
authorised by them. get_or_create: another migration may make the same groups."""

from django.db import migrations

ROLES = ("viewer", "support", "admin")


def create_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ROLES:
        Group.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [("tenants", "0002_api"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
