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
