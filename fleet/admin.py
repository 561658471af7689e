"""Admin for the fleet: for inspection. States change only through services; what agents report
(PCI address, IOMMU group, UUID, serial, VRAM, firmware, temperature, ECC, row remaps, Xid) and a
registered server's platform and variant are read-only, so health data cannot be faked by hand."""

from django.contrib import admin

from console.admin import ServiceManagedAdmin
from fleet.models import Allocation, AllocationGpu, Gpu, NvSwitch, Partition, Server


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    fields = ("module_id", "pci_address", "iommu_group", "serial", "firmware_version", "state", "isolated")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Server)
class ServerAdmin(ServiceManagedAdmin):
    list_display = ("hostname", "platform", "variant", "rack", "slot", "state", "host_kernel_version", "plug_mode")
    list_filter = ("platform", "variant", "state", "rack", "host_kernel", "plug_mode", "iommu_backend")
    search_fields = ("hostname", "k8s_node_name", "agent_endpoint")
    readonly_fields = ("state", "last_seen_at", "created_at", "host_kernel_version", "fabric_manager_version")
    inlines = [GpuInline]

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        # A registered server's GPUs, switches and partitions were made from its platform's data.
        return (*fields, "platform", "variant") if obj is not None else fields


@admin.register(Gpu)
class GpuAdmin(ServiceManagedAdmin):
    list_display = (
        "__str__", "pci_address", "iommu_group", "serial", "firmware_version", "state", "isolated", "last_xid",
    )
    list_filter = ("state", "server__platform", "firmware_version", "drain_requested", "isolated")
    search_fields = ("server__hostname", "serial", "uuid", "pci_address")
    list_select_related = ("server",)
    readonly_fields = (
        "server", "module_id", "state", "drain_requested", "scrubbed_at", "leveled_at", "quarantine_reason",
        # reported by the node agent
        "pci_address", "iommu_group", "numa_node", "uuid", "serial", "vram_mib", "firmware_version",
        "temperature_c", "ecc_corrected", "ecc_uncorrected", "row_remaps", "last_xid", "last_xid_at",
        "isolated", "isolation_reason",
    )


@admin.register(NvSwitch)
class NvSwitchAdmin(ServiceManagedAdmin):
    list_display = ("__str__", "pci_address", "iommu_group", "device_id")
    list_filter = ("server__platform",)
    search_fields = ("server__hostname", "pci_address")
    list_select_related = ("server",)
    readonly_fields = ("server", "index", "pci_address", "iommu_group", "device_id")


@admin.register(Partition)
class PartitionAdmin(ServiceManagedAdmin):
    list_display = ("__str__", "size", "module_ids", "nvlinks", "state")
    list_filter = ("state", "size", "server__platform")
    search_fields = ("server__hostname",)
    list_select_related = ("server",)
    readonly_fields = ("server", "partition_id", "module_ids", "size", "nvlinks", "state", "failure_reason")


class AllocationGpuInline(admin.TabularInline):
    model = AllocationGpu
    extra = 0
    readonly_fields = ("gpu", "held")
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Allocation)
class AllocationAdmin(ServiceManagedAdmin):
    list_display = ("__str__", "holder", "owner", "server", "partition", "state", "created_at")
    list_filter = ("state", "server__platform")
    search_fields = ("holder", "owner", "consumer_name", "server__hostname")
    list_select_related = ("server", "partition")
    readonly_fields = (
        "server", "partition", "holder", "owner", "claim_name", "consumer_namespace", "consumer_name", "state",
        "fault_reason", "fault_fatal", "created_at", "activating_at", "active_at", "releasing_at", "cleaning_at",
        "returned_at", "faulted_at",
    )
    inlines = [AllocationGpuInline]
