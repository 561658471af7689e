"""Validators for tenant input: names that become Kubernetes namespaces, and GPU counts."""

import re

from django.core.exceptions import ValidationError

from hardware.platforms import all_partition_sizes

NAMESPACE_PREFIX = "tenant-"
MAX_NAMESPACE_LENGTH = 63
MAX_TENANT_NAME_LENGTH = MAX_NAMESPACE_LENGTH - len(NAMESPACE_PREFIX)  # 56
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def validate_tenant_name(value: str) -> None:
    """A DNS-1123 label short enough that `tenant-<name>` is a valid namespace (≤ 63 characters)."""
    if not value or not _DNS1123_LABEL.match(value):
        raise ValidationError(
            "%(value)r is not a DNS-1123 label: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
            params={"value": value},
            code="invalid_tenant_name",
        )
    if len(value) > MAX_TENANT_NAME_LENGTH:
        raise ValidationError(
            "%(value)r is %(n)d characters; at most %(max)d so that namespace tenant-<name> fits 63",
            params={"value": value, "n": len(value), "max": MAX_TENANT_NAME_LENGTH},
            code="tenant_name_too_long",
        )


def validate_gpu_count(value: int) -> None:
    sizes = all_partition_sizes()
    if value not in sizes:
        raise ValidationError(
            "%(value)s GPUs is not a partition size of any platform; choose one of %(sizes)s",
            params={"value": value, "sizes": ", ".join(map(str, sizes))},
            code="invalid_gpu_count",
        )


def namespace_for(tenant_name: str) -> str:
    return f"{NAMESPACE_PREFIX}{tenant_name}"
