"""Validators for tenant input: names that become Kubernetes namespaces, and GPU counts.

The namespace rule itself (DNS-1123 label, `tenant-<name>` within 63 characters) is hardware's
(`hardware.cluster`, `hardware.kube_constants`), written once; here it becomes a form error.
"""

from django.core.exceptions import ValidationError

from hardware.cluster import DNS1123_LABEL, DNS1123_LABEL_MAX
from hardware.kube_constants import TENANT_NAMESPACE_PREFIX, tenant_namespace
from hardware.platforms import all_partition_sizes

MAX_TENANT_NAME_LENGTH = DNS1123_LABEL_MAX - len(TENANT_NAMESPACE_PREFIX)  # 56


def validate_tenant_name(value: str) -> None:
    """A DNS-1123 label short enough that `tenant-<name>` is a valid namespace (≤ 63 characters)."""
    if not value or not DNS1123_LABEL.match(value):
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


namespace_for = tenant_namespace
