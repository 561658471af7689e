"""Servers, their GPUs, NVSwitches and NVLink partitions.

States change only through the machines in fleet/states.py (their `transition`), called by the
services in fleet/services.py.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from fleet.constants import GuestFirmware, InitSystem, IommuBackend, KernelGeneration, PlugMode
from fleet.states import ALLOCATION_OPEN, AllocationState, GpuState, PartitionState, ServerState
from fleet.validators import validate_hostname, validate_pci_address, validate_platform_key
from hardware.platforms import PLATFORMS, Platform, PlatformError


class Server(models.Model):
    """One GPU server: its platform and board variant, where it stands, how to reach its agent,
    and the host features that decide how fast its VMs boot."""

    hostname = models.CharField(max_length=253, unique=True, validators=[validate_hostname])
    platform = models.CharField(
        max_length=32, validators=[validate_platform_key], choices=[(k, p.name) for k, p in PLATFORMS.items()]
    )
    variant = models.CharField(max_length=32, help_text="Board variant of the platform (vendor layout)")
    rack = models.CharField(max_length=32, db_index=True)
    slot = models.PositiveSmallIntegerField()
    agent_endpoint = models.CharField(max_length=255, blank=True, help_text="host:port of the node agent")
    k8s_node_name = models.CharField(max_length=253, blank=True)
    state = models.CharField(
        max_length=16, choices=ServerState.choices, default=ServerState.ACTIVE, db_index=True
    )
    iommu_backend = models.CharField(
        max_length=16, choices=IommuBackend.choices, default=IommuBackend.VFIO_TYPE1
    )
    hugepages = models.BooleanField(default=False, help_text="Guest RAM backed by 1 GiB huge pages")
    plug_mode = models.CharField(max_length=8, choices=PlugMode.choices, default=PlugMode.HOT)
    host_kernel = models.CharField(
        max_length=8, choices=KernelGeneration.choices, default=KernelGeneration.OLD
    )
    host_kernel_version = models.CharField(
        max_length=64, blank=True, help_text="Host kernel release as its agent reports it (drives the boot prediction)"
    )
    # What the node's Kata configuration boots; "" when its agent cannot tell (predicted conservatively).
    qemu_version = models.CharField(max_length=32, blank=True)
    guest_kernel_version = models.CharField(max_length=64, blank=True, help_text="Kata guest kernel release")
    guest_firmware = models.CharField(max_length=8, choices=GuestFirmware.choices, blank=True)
    init_system = models.CharField(max_length=8, choices=InitSystem.choices, blank=True,
                                   help_text="The guest's init, which writes the CDI spec the kata-agent waits for")
    fabric_manager_version = models.CharField(max_length=32, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["rack", "slot", "hostname"]
        constraints = [
            models.UniqueConstraint(fields=["rack", "slot"], name="server_rack_slot_unique"),
        ]

    def __str__(self) -> str:
        return self.hostname

    @property
    def platform_spec(self) -> Platform:
        return PLATFORMS[self.platform]

    def clean(self) -> None:
        spec = PLATFORMS.get(self.platform)
        if spec is not None:
            try:
                spec.variant(self.variant)
            except PlatformError as exc:
                raise ValidationError({"variant": str(exc)}) from exc
        if not self.k8s_node_name:
            self.k8s_node_name = self.hostname


class Gpu(models.Model):
    """One GPU module on a server. `module_id` is the fabric manager's physical id (1..N)."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="gpus")
    module_id = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    pci_address = models.CharField(max_length=16, validators=[validate_pci_address])
    iommu_group = models.PositiveIntegerField()
    numa_node = models.SmallIntegerField(default=0)
    uuid = models.CharField(max_length=64, unique=True)
    serial = models.CharField(max_length=32, unique=True)
    vram_mib = models.PositiveIntegerField()
    firmware_version = models.CharField(max_length=32)
    state = models.CharField(max_length=16, choices=GpuState.choices, default=GpuState.FREE, db_index=True)
    drain_requested = models.BooleanField(
        default=False, help_text="Go to drained instead of free after the current lease is cleaned"
    )
    temperature_c = models.FloatField(null=True, blank=True)
    ecc_corrected = models.PositiveIntegerField(default=0)
    ecc_uncorrected = models.PositiveIntegerField(default=0)
    row_remaps = models.PositiveIntegerField(default=0)
    last_xid = models.PositiveIntegerField(null=True, blank=True)
    last_xid_at = models.DateTimeField(null=True, blank=True)
    scrubbed_at = models.DateTimeField(null=True, blank=True)
    leveled_at = models.DateTimeField(null=True, blank=True)
    quarantine_reason = models.TextField(blank=True)
    isolated = models.BooleanField(
        default=True, help_text="VFIO can hand this GPU, and only it, to a VM (its agent says); else never offered"
    )
    isolation_reason = models.TextField(blank=True, help_text="Why the GPU is not isolated, as its agent reports")

    class Meta:
        ordering = ["server", "module_id"]
        verbose_name = "GPU"
        verbose_name_plural = "GPUs"
        constraints = [
            models.UniqueConstraint(fields=["server", "module_id"], name="gpu_module_unique_per_server"),
            models.UniqueConstraint(fields=["server", "pci_address"], name="gpu_bdf_unique_per_server"),
        ]

    def __str__(self) -> str:
        return f"{self.server.hostname}/gpu{self.module_id}" if self.server_id else f"gpu{self.module_id}"

    def clean(self) -> None:
        if self.server_id and self.module_id:
            ids = self.server.platform_spec.gpu_ids
            if self.module_id not in ids:
                raise ValidationError({"module_id": f"module id must be one of {list(ids)} on this platform"})


class NvSwitch(models.Model):
    """One NVSwitch on a server's baseboard (owned by the fabric-manager service VM)."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="nvswitches")
    index = models.PositiveSmallIntegerField()
    pci_address = models.CharField(max_length=16, validators=[validate_pci_address])
    iommu_group = models.PositiveIntegerField()
    device_id = models.CharField(max_length=6, help_text="PCI device id, e.g. 0x22a3")

    class Meta:
        ordering = ["server", "index"]
        verbose_name = "NVSwitch"
        verbose_name_plural = "NVSwitches"
        constraints = [
            models.UniqueConstraint(fields=["server", "index"], name="nvswitch_index_unique_per_server"),
        ]

    def __str__(self) -> str:
        return f"{self.server.hostname}/nvswitch{self.index}"


class Partition(models.Model):
    """A server's row of its platform's partition table, with the fabric state we last set or saw."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="partitions")
    partition_id = models.PositiveSmallIntegerField()
    module_ids = models.JSONField(help_text="GPU physical (module) ids in this partition")
    size = models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(64)])
    nvlinks = models.PositiveSmallIntegerField(default=0)
    state = models.CharField(
        max_length=16, choices=PartitionState.choices, default=PartitionState.INACTIVE, db_index=True
    )
    failure_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["server", "partition_id"]
        constraints = [
            models.UniqueConstraint(fields=["server", "partition_id"], name="partition_id_unique_per_server"),
            models.CheckConstraint(condition=Q(size__gte=1), name="partition_size_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.server.hostname}/p{self.partition_id}" if self.server_id else f"p{self.partition_id}"

    def clean(self) -> None:
        if self.server_id:
            spec = self.server.platform_spec
            row = spec.partitions_by_id.get(self.partition_id)
            if row is None:
                raise ValidationError({"partition_id": f"not in the {spec.name} partition table"})
            if list(row.gpus) != list(self.module_ids) or row.size != self.size:
                raise ValidationError({"module_ids": "must equal the platform table's row"})


class Allocation(models.Model):
    """Fleet's hold on one partition's GPUs for one holder, as a Kubernetes DRA ResourceClaim holds an
    allocation result and who it is reserved for (and Nomad an allocation).

    `holder` is opaque to fleet (e.g. `lease/42`): whoever asked for the GPUs learns of changes
    through `fleet.holders`. `owner` is the account the holder belongs to (placement spreads one
    owner's allocations over racks); `claim_name` and `consumer_*` name the cluster's claim object
    and the pod that may use the GPUs, for the node's device plugin.
    """

    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="allocations")
    partition = models.ForeignKey(Partition, on_delete=models.PROTECT, related_name="allocations")
    gpus = models.ManyToManyField(Gpu, through="AllocationGpu", related_name="allocations")
    holder = models.CharField(max_length=64, db_index=True)
    owner = models.CharField(max_length=64, blank=True)
    claim_name = models.CharField(max_length=253, blank=True, help_text="The cluster's claim object (GpuLease)")
    consumer_namespace = models.CharField(max_length=63, blank=True)
    consumer_name = models.CharField(max_length=253, blank=True, help_text="The pod that may use the GPUs")
    state = models.CharField(
        max_length=16, choices=AllocationState.choices, default=AllocationState.RESERVED, db_index=True
    )
    fault_reason = models.TextField(blank=True)
    fault_fatal = models.BooleanField(default=False, help_text="The fault ends the holder's workload")
    created_at = models.DateTimeField(auto_now_add=True)
    activating_at = models.DateTimeField(null=True, blank=True)
    active_at = models.DateTimeField(null=True, blank=True)
    releasing_at = models.DateTimeField(null=True, blank=True)
    cleaning_at = models.DateTimeField(null=True, blank=True)
    returned_at = models.DateTimeField(null=True, blank=True)
    faulted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["server", "state"])]

    def __str__(self) -> str:
        return f"allocation-{self.pk}" if self.pk else "allocation (new)"

    @property
    def label(self) -> str:
        """Who holds it, for people: the owner and the pod."""
        return " · ".join(part for part in (self.owner, self.consumer_name) if part) or self.holder

    @property
    def is_open(self) -> bool:
        return self.state in ALLOCATION_OPEN


class AllocationGpu(models.Model):
    """A GPU of an allocation. `held` is true until the allocation is returned; the partial unique
    constraint on it is invariant 1 in the database: a GPU in at most one allocation not returned."""

    allocation = models.ForeignKey(Allocation, on_delete=models.CASCADE, related_name="allocation_gpus")
    gpu = models.ForeignKey(Gpu, on_delete=models.PROTECT, related_name="allocation_gpus")
    held = models.BooleanField(default=True)

    class Meta:
        verbose_name = "allocation GPU"
        constraints = [
            models.UniqueConstraint(fields=["gpu"], condition=Q(held=True), name="gpu_in_one_open_allocation"),
            models.UniqueConstraint(fields=["allocation", "gpu"], name="allocation_gpu_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.allocation} ↔ {self.gpu_id}"
