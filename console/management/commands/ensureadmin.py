"""`manage.py ensureadmin`: create the development admin once and print its credentials once."""

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from console.roles import ADMIN


class Command(BaseCommand):
    help = "Create an admin user (in the `admin` group) if none exists; print the password once."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, **opts):
        User = get_user_model()
        group, _ = Group.objects.get_or_create(name=ADMIN)
        user = User.objects.filter(username=opts["username"]).first()
        if user is not None:
            user.groups.add(group)
            self.stdout.write(f"Admin user {opts['username']!r} exists (password was printed when created).")
            return
        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=opts["username"], email="", password=password)
        user.groups.add(group)
        self.stdout.write(self.style.SUCCESS(f"Created admin user {opts['username']!r} password {password}"))
