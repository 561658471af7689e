"""Template context for every page."""

from django.conf import settings


def simulated_fleet(request) -> dict:
    """`simulated_fleet`: whether this console runs the simulated fleet (the simulator panel's link)."""
    return {"simulated_fleet": settings.SIMULATED_FLEET}
