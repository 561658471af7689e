"""The console's roles as data: three groups and the permissions each holds.

Infrastructure (imports no app): the data migration, `ensureadmin` and the operator UI read it.
`viewer` reads everything; `support` also runs operational actions (cordon, drain, scrub, re-level,
clear a quarantine); `admin` also controls the simulator and tenant tokens. A superuser holds every
permission. The REST API checks the same permission names (`user.has_perm(OPERATE)`).
"""

VIEW = "console.view_console"
OPERATE = "console.operate_fleet"
ADMINISTER = "console.administer_console"

# codename -> human name; declared on console.Operation's Meta, created by migration 0002.
PERMISSIONS = {
    "view_console": "Can read the operator console (fleet map, servers, audit)",
    "operate_fleet": "Can run support actions (cordon, drain, scrub, re-level, clear quarantine)",
    "administer_console": "Can administer the console (simulator controls, tenant tokens)",
}

VIEWER, SUPPORT, ADMIN = "viewer", "support", "admin"
GROUPS = {
    VIEWER: ("view_console",),
    SUPPORT: ("view_console", "operate_fleet"),
    ADMIN: ("view_console", "operate_fleet", "administer_console"),
}


def ensure_groups(group_model, permission_model, content_type) -> None:
    """get_or_create every group and give it its permissions (idempotent: the REST API's migration
    may create the same groups; extra permissions another app gave them are kept)."""
    perms = {}
    for codename, name in PERMISSIONS.items():
        perm, _ = permission_model.objects.get_or_create(
            codename=codename, content_type=content_type, defaults={"name": name}
        )
        perms[codename] = perm
    for group_name, codenames in GROUPS.items():
        group, _ = group_model.objects.get_or_create(name=group_name)
        group.permissions.add(*(perms[c] for c in codenames))
