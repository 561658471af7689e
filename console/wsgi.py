import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
application = get_wsgi_application()

from console.startup import freeze_startup_heap  # noqa: E402

freeze_startup_heap()
