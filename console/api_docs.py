"""The API's reference pages from this app alone. Swagger UI and Redoc come from
drf-spectacular-sidecar, not a CDN: nothing outside loopback is reachable in many data centres, and an
operator's browser should not call third parties from the console. Redoc's bundle still names one
outside address, the Redocly logo beside its credit in the sidebar; it is served here with that logo
left blank (the credit's text stays)."""

from __future__ import annotations

from functools import cache

from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.views.decorators.http import require_safe
from drf_spectacular.views import SpectacularRedocView

REDOC_BUNDLE = "drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"
REDOCLY_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
BLANK_IMAGE = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@cache
def redoc_bundle() -> bytes:
    """Redoc's standalone bundle with no address outside this app."""
    path = finders.find(REDOC_BUNDLE)
    with open(path, "rb") as bundle:
        return bundle.read().replace(REDOCLY_LOGO, BLANK_IMAGE)


@require_safe
def redoc_bundle_view(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(redoc_bundle(), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "public, max-age=86400"
    return response


class RedocView(SpectacularRedocView):
    """drf-spectacular's Redoc page, without its Google Fonts links, on the bundle above."""

    template_name = "console/api_redoc.html"

    @staticmethod
    def _redoc_standalone() -> str:
        return reverse("api-redoc-bundle")
