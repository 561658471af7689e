"""`manage.py ensureadmin`: create the development admin once and print its credentials once."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an admin user for the embedded default if none exists; print the password once."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, **opts):
        User = get_user_model()
        if User.objects.filter(username=opts["username"]).exists():
            self.stdout.write(f"Admin user {opts['username']!r} exists (password was printed when created).")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=opts["username"], email="", password=password)
        self.stdout.write(self.style.SUCCESS(f"Created admin user {opts['username']!r} password {password}"))
