import factory
from django.contrib.auth import get_user_model

from tenants.models import Lease, Tenant


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-for-tests")


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"tenant{n}")
    display_name = factory.LazyAttribute(lambda o: o.name.title())
    gpu_quota = 16


class LeaseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Lease

    tenant = factory.SubFactory(TenantFactory)
    image = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0-ubi8"
    gpu_count = 1


def make_user(role: str | None = None, **kwargs):
    """A user in one of the console's role groups (console/roles.py), or in none. The groups are made
    here when missing: a transactional test's flush removes what the migration created."""
    from django.contrib.auth.models import Group, Permission
    from django.contrib.contenttypes.models import ContentType

    from console.models import Operation
    from console.roles import ensure_groups

    user = UserFactory(**kwargs)
    if role:
        ensure_groups(Group, Permission, ContentType.objects.get_for_model(Operation))
        user.groups.add(Group.objects.get(name=role))
    return user
