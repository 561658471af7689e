"""Field validators for fleet models."""

import re

from django.core.exceptions import ValidationError

from hardware.platforms import PLATFORMS

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def validate_hostname(value: str) -> None:
    if not _HOSTNAME.match(value or ""):
        raise ValidationError(
            "%(value)r is not a valid host name (lower-case letters, digits, '-' and '.')",
            params={"value": value},
            code="invalid_hostname",
        )


def validate_platform_key(value: str) -> None:
    if value not in PLATFORMS:
        raise ValidationError(
            "Unknown platform %(value)r; known: %(known)s",
            params={"value": value, "known": ", ".join(sorted(PLATFORMS))},
            code="unknown_platform",
        )


def validate_pci_address(value: str) -> None:
    if not _BDF.match(value or ""):
        raise ValidationError(
            "%(value)r is not a PCI address like 0000:18:00.0", params={"value": value}, code="invalid_bdf"
        )
