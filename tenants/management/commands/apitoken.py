"""`manage.py apitoken`: create, list and revoke API tokens (admins).

    apitoken create --tenant acme [--open-account] [--name ci]   a tenant's token (printed once)
    apitoken create --user alice [--name laptop]                 an operator's (needs a console role)
    apitoken revoke PREFIX                                       refuse it from now on
    apitoken list [--tenant acme]
"""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from console.audit import Actor
from console.errors import DomainError
from console.models import Source
from tenants import services
from tenants.models import ApiToken, Tenant
from tenants.tokens import api_token_create, api_token_revoke


class Command(BaseCommand):
    help = "Create (printed once), list or revoke API tokens of tenants and operators."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create")
        who = create.add_mutually_exclusive_group(required=True)
        who.add_argument("--tenant")
        who.add_argument("--user")
        create.add_argument("--name", default="")
        create.add_argument("--open-account", action="store_true",
                            help="Open the tenant's account first when it does not exist")
        revoke = sub.add_parser("revoke")
        revoke.add_argument("prefix")
        listing = sub.add_parser("list")
        listing.add_argument("--tenant")

    def handle(self, *args, **opts):
        actor = Actor.system("cli", source=Source.CLI)
        try:
            getattr(self, f"_{opts['action']}")(opts, actor)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        except DomainError as exc:
            raise CommandError(str(exc)) from exc

    def _create(self, opts, actor):
        tenant = user = None
        if opts["tenant"]:
            if opts["open_account"]:
                tenant = services.tenant_ensure(name=opts["tenant"], actor=actor)
            else:
                tenant = Tenant.objects.filter(name=opts["tenant"]).first()
                if tenant is None:
                    raise CommandError(f"no tenant {opts['tenant']} (--open-account opens it)")
        else:
            user = get_user_model().objects.filter(username=opts["user"]).first()
            if user is None:
                raise CommandError(f"no user {opts['user']}")
        _, raw = api_token_create(actor=actor, tenant=tenant, user=user, name=opts["name"])
        self.stdout.write(raw)

    def _revoke(self, opts, actor):
        token = ApiToken.objects.filter(prefix=opts["prefix"]).first()
        if token is None:
            raise CommandError(f"no token {opts['prefix']}")
        api_token_revoke(token=token, actor=actor)
        self.stdout.write(f"revoked {token.prefix}")

    def _list(self, opts, actor):
        tokens = ApiToken.objects.select_related("tenant", "user")
        if opts["tenant"]:
            tokens = tokens.filter(tenant__name=opts["tenant"])
        for token in tokens:
            who = f"tenant:{token.tenant.name}" if token.tenant_id else f"user:{token.user.get_username()}"
            state = "revoked" if token.revoked_at else "active"
            self.stdout.write(f"{token.prefix:<10} {who:<30} {state:<8} {token.last_used_at or '-'} {token.name}")
