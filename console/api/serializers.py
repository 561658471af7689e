"""Operator API shapes: servers, GPUs, partitions, allocations, events, operations and previews."""

from rest_framework import serializers

from console.models import AuditEvent, Operation
from fleet.models import Allocation, Gpu, Partition, Server


class ServerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Server
        fields = ("id", "hostname", "platform", "variant", "rack", "slot", "state", "k8s_node_name",
                  "host_kernel", "iommu_backend", "plug_mode", "hugepages", "fabric_manager_version",
                  "last_seen_at", "created_at")


class GpuSerializer(serializers.ModelSerializer):
    server = serializers.CharField(source="server.hostname")
    server_id = serializers.IntegerField()

    class Meta:
        model = Gpu
        fields = ("id", "server_id", "server", "module_id", "pci_address", "uuid", "serial", "state",
                  "drain_requested", "firmware_version", "temperature_c", "ecc_corrected", "ecc_uncorrected",
                  "row_remaps", "last_xid", "last_xid_at", "scrubbed_at", "leveled_at", "quarantine_reason",
                  "isolated")


class PartitionSerializer(serializers.ModelSerializer):
    server_id = serializers.IntegerField()

    class Meta:
        model = Partition
        fields = ("id", "server_id", "partition_id", "module_ids", "size", "nvlinks", "state", "failure_reason")


class AllocationSerializer(serializers.ModelSerializer):
    server_id = serializers.IntegerField()
    partition = serializers.IntegerField(source="partition.partition_id")
    gpu_module_ids = serializers.SerializerMethodField()

    class Meta:
        model = Allocation
        fields = ("id", "server_id", "partition", "gpu_module_ids", "holder", "owner", "consumer_namespace",
                  "consumer_name", "state", "fault_reason", "fault_fatal", "created_at", "active_at",
                  "returned_at")

    def get_gpu_module_ids(self, allocation) -> list[int]:
        return sorted(ag.gpu.module_id for ag in allocation.allocation_gpus.all())


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ("id", "at", "actor_text", "source", "correlation_id", "verb", "target_type", "target_id",
                  "target_repr", "parent_type", "parent_id", "before", "after", "message")


class OperationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Operation
        fields = ("id", "kind", "status", "actor_text", "source", "target_type", "target_id", "target_repr",
                  "progress", "log", "created_at", "started_at", "finished_at")


class ActionRequestSerializer(serializers.Serializer):
    dry_run = serializers.BooleanField(default=False, help_text="Only preview: what it would do, and a token")
    preview_token = serializers.CharField(required=False, max_length=2000,
                                          help_text="The token of the preview being confirmed")

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({n: ["Unknown field."] for n in unknown})
        return super().to_internal_value(data)

    def validate(self, attrs):
        if not attrs["dry_run"] and not attrs.get("preview_token"):
            raise serializers.ValidationError(
                {"preview_token": ["Required to confirm; send dry_run=true first to get one."]})
        return attrs


class PreviewSerializer(serializers.Serializer):
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.IntegerField()
    target = serializers.CharField()
    summary = serializers.CharField()
    effects = serializers.ListField(child=serializers.CharField())
    blockers = serializers.ListField(child=serializers.CharField())
    allowed = serializers.BooleanField()
    token = serializers.CharField()
