"""factory_boy factories and graph builders (`make_server(platform=...)`)."""

from tests.factories.fleet import AllocationFactory, GpuFactory, ServerFactory, make_server
from tests.factories.tenants import LeaseFactory, TenantFactory, UserFactory, make_user

__all__ = [
    "AllocationFactory", "GpuFactory", "LeaseFactory", "ServerFactory", "TenantFactory", "UserFactory", "make_server",
    "make_user",
]
