"""ASGI entry point: HTTP through Django (one thread hop per request, console.asgi_http), websockets
through Channels (authenticated sessions)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

from console.asgi_http import get_http_application

django_asgi_app = get_http_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from console.ui.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

from console.startup import freeze_startup_heap  # noqa: E402

freeze_startup_heap()
