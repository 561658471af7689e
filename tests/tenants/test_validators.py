import pytest
from django.core.exceptions import ValidationError

from tenants.models import Tenant
from tenants.validators import validate_gpu_count, validate_tenant_name

GOOD = ["a", "landon", "acme-ai", "t0", "0t", "a" * 56, "x-1-y"]
BAD = [
    ("", "DNS-1123"),
    ("Landon", "DNS-1123"),
    ("-acme", "DNS-1123"),
    ("acme-", "DNS-1123"),
    ("ac_me", "DNS-1123"),
    ("ac.me", "DNS-1123"),
    ("acmé", "DNS-1123"),
    ("a b", "DNS-1123"),
    ("a" * 57, "at most 56"),
    ("a" * 64, "at most 56"),
]


@pytest.mark.parametrize("name", GOOD)
def test_good_tenant_names(name):
    validate_tenant_name(name)
    assert len(f"tenant-{name}") <= 63


@pytest.mark.parametrize(("name", "message"), BAD)
def test_bad_tenant_names(name, message):
    with pytest.raises(ValidationError, match=message):
        validate_tenant_name(name)


@pytest.mark.django_db
def test_full_clean_names_the_field():
    with pytest.raises(ValidationError) as exc:
        Tenant(name="Bad_Name", gpu_quota=1).full_clean()
    assert "name" in exc.value.message_dict


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_partition_sizes_are_valid_gpu_counts(count):
    validate_gpu_count(count)


@pytest.mark.parametrize("count", [0, 3, 5, 6, 7, 9, 16])
def test_other_gpu_counts_are_refused(count):
    with pytest.raises(ValidationError, match="not a partition size"):
        validate_gpu_count(count)
