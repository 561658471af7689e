import factory

from console.audit import Actor
from fleet.models import Allocation, Gpu, Server
from fleet.registration import ServerSpec, server_register_from_platform
from hardware.platforms import get_platform

TEST_ACTOR = Actor.system("tests")


class ServerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Server

    hostname = factory.Sequence(lambda n: f"node-{n:04d}")
    platform = "hgx-h100-8"
    variant = "supermicro"
    rack = factory.Sequence(lambda n: f"r{n // 8:02d}")
    slot = factory.Sequence(lambda n: n % 8 + 1)


class GpuFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Gpu

    server = factory.SubFactory(ServerFactory)
    module_id = factory.Sequence(lambda n: n % 8 + 1)
    pci_address = factory.Sequence(lambda n: f"0000:{n % 256:02x}:00.0")
    iommu_group = factory.Sequence(lambda n: 100 + n)
    uuid = factory.Sequence(lambda n: f"GPU-test-{n:08d}")
    serial = factory.Sequence(lambda n: f"1650000{n:06d}")
    vram_mib = 81079
    firmware_version = "96.00.99.00.01"


_counter = iter(range(1, 10**9))


def make_server(platform: str = "hgx-h100-8", variant: str | None = None, *, rack: str | None = None, **kw) -> Server:
    """A server with every GPU, NVSwitch and partition row its platform data describes; by default a
    6.8 host (an 8-GPU VM boots in minutes), so leases of any size are started."""
    kw.setdefault("host_kernel_version", "6.8.0-45-generic")
    spec = get_platform(platform)
    n = next(_counter)
    server, _ = server_register_from_platform(
        spec=ServerSpec(
            hostname=kw.pop("hostname", f"test-{platform}-{n:05d}"),
            platform=platform,
            variant=variant or spec.variants[0].key,
            rack=rack or f"rack-{n:05d}",
            slot=kw.pop("slot", 1),
            **kw,
        ),
        actor=TEST_ACTOR,
    )
    return server


class AllocationFactory(factory.django.DjangoModelFactory):
    """An allocation row on a server's partition (no GPUs held: add AllocationGpu rows as needed)."""

    class Meta:
        model = Allocation

    server = factory.LazyFunction(make_server)
    partition = factory.LazyAttribute(lambda o: o.server.partitions.get(partition_id=8))
    holder = factory.Sequence(lambda n: f"test/{n}")
