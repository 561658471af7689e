"""Request and response shapes of the tenants' API (containers, leases, tenancies)."""

from __future__ import annotations

import re

from rest_framework import serializers

from hardware.exceptions import InvalidArgument
from hardware.oci import parse_image_reference
from tenants.constants import MAX_PENDING_SECONDS_MAX
from tenants.lease_documents import TIMESTAMPS
from tenants.models import Lease, Tenant
from tenants.states import LEASE_TERMINAL, FailureReason, LeaseState, TenantState
from tenants.validators import MAX_TENANT_NAME_LENGTH, validate_gpu_count, validate_tenant_name

IMAGE_MAX = Lease._meta.get_field("image").max_length
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class StrictIntegerField(serializers.IntegerField):
    """An integer that must be a JSON number: "8" and true are refused, not coerced."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A string that must be a JSON string (no numbers turned into text)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class NoUnknownFieldsMixin:
    """Unknown fields are errors, reported together with the known fields' errors (one answer names
    every field to fix)."""

    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        errors = {name: [serializers.ErrorDetail("Unknown field.", code="unknown_field")] for name in unknown}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not isinstance(exc.detail, dict):
                raise
            raise serializers.ValidationError({**exc.detail, **errors}) from exc
        if errors:
            raise serializers.ValidationError(errors)
        return value


def validate_image_reference(value: str) -> None:
    if len(value) > IMAGE_MAX:  # the field's max_length says so; the parser's message would echo it whole
        return
    try:
        parse_image_reference(value)
    except InvalidArgument as exc:
        raise serializers.ValidationError(str(exc), code="invalid_image") from exc


class ContainerCreateSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    """A container to run: the seed's payload (`container-url`, `tenancy`) and optional settings."""

    container_url = StrictCharField(max_length=IMAGE_MAX, validators=[validate_image_reference],
                                    help_text="OCI image reference")
    tenancy = StrictCharField(max_length=MAX_TENANT_NAME_LENGTH, help_text="Your tenancy (the token's tenant)")
    gpus = StrictIntegerField(default=1, min_value=1, max_value=64,
                              help_text="GPUs: a partition size of the fleet's platforms (1, 2, 4 or 8)")
    command = serializers.ListField(child=StrictCharField(max_length=4096, allow_blank=True), max_length=256,
                                    required=False, help_text="Entrypoint (argv)")
    args = serializers.ListField(child=StrictCharField(max_length=4096, allow_blank=True), max_length=256,
                                 required=False, help_text="Arguments to the entrypoint")
    env = serializers.DictField(child=StrictCharField(max_length=32768, allow_blank=True), required=False,
                                help_text="Environment variables (names: letters, digits, underscore)")
    max_pending_seconds = StrictIntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_PENDING_SECONDS_MAX,
        help_text="Fail with PendingTimeout if not placed within this many seconds",
    )

    def get_fields(self):
        fields = super().get_fields()
        fields["container-url"] = fields.pop("container_url")
        return fields

    def validate_tenancy(self, value):
        try:
            validate_tenant_name(value)
        except Exception as exc:  # django ValidationError: same message, as a field error
            raise serializers.ValidationError(list(getattr(exc, "messages", [str(exc)])), code="invalid_tenancy") \
                from exc
        return value

    def validate_gpus(self, value):
        try:
            validate_gpu_count(value)
        except Exception as exc:
            raise serializers.ValidationError(list(getattr(exc, "messages", [str(exc)])), code="invalid_gpu_count") \
                from exc
        return value

    def validate_env(self, value):
        if len(value) > 128:
            raise serializers.ValidationError("At most 128 variables.", code="too_many")
        bad = [name for name in value if not _ENV_NAME.match(name) or len(name) > 256]
        if bad:
            raise serializers.ValidationError(f"Invalid variable names: {', '.join(bad[:5])}", code="invalid_name")
        return value


class ConditionSerializer(serializers.Serializer):
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=["True", "False", "Unknown"])
    reason = serializers.CharField()
    message = serializers.CharField(allow_blank=True)
    last_transition_time = serializers.DateTimeField()


class ServerRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    hostname = serializers.CharField()
    rack = serializers.CharField()
    platform = serializers.CharField()


class PartitionRefSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="The platform table's partition id")
    module_ids = serializers.ListField(child=serializers.IntegerField())
    size = serializers.IntegerField()
    nvlinks = serializers.IntegerField()


class GpuRefSerializer(serializers.Serializer):
    module_id = serializers.IntegerField()
    uuid = serializers.CharField()
    pci_address = serializers.CharField()


class BootPhaseSerializer(serializers.Serializer):
    phase = serializers.CharField()
    started_at = serializers.DateTimeField(allow_null=True, help_text="Empty until the phase starts")
    ended_at = serializers.DateTimeField(allow_null=True)
    seconds = serializers.FloatField(allow_null=True)
    predicted_seconds = serializers.FloatField(allow_null=True)
    detail = serializers.CharField(allow_blank=True)


class LeaseLinksSerializer(serializers.Serializer):
    self = serializers.CharField()
    tenancy = serializers.CharField()


class LeaseSerializer(serializers.Serializer):
    """A lease: one container on one NVLink partition, from request to clean-up.

    The shape only (the OpenAPI component): `tenants.lease_documents` builds it from rows."""

    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=LeaseState.choices, help_text=(
        "pending → placed → partitioning → booting → running → releasing → scrubbing → leveling → released; "
        f"failed from any. Terminal: {', '.join(sorted(LEASE_TERMINAL))}."))
    terminal = serializers.BooleanField()
    tenancy = serializers.CharField()
    container_url = serializers.CharField()
    gpus = serializers.IntegerField()
    command = serializers.ListField(child=serializers.CharField())
    args = serializers.ListField(child=serializers.CharField())
    env = serializers.DictField(child=serializers.CharField())
    max_pending_seconds = serializers.IntegerField(allow_null=True)
    conditions = ConditionSerializer(many=True)
    failure_reason = serializers.ChoiceField(choices=FailureReason.choices, allow_null=True)
    failure_message = serializers.CharField()
    pending_reason = serializers.CharField()
    server = ServerRefSerializer(allow_null=True)
    partition = PartitionRefSerializer(allow_null=True)
    gpu_devices = GpuRefSerializer(many=True)
    boot_phases = BootPhaseSerializer(many=True)
    release_requested = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    links = LeaseLinksSerializer()

    def get_fields(self):
        fields = super().get_fields()
        fields["container-url"] = fields.pop("container_url")
        for name in TIMESTAMPS:
            fields[name] = serializers.DateTimeField(allow_null=True, read_only=True)
        return fields


class LeaseFilterSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    state = serializers.CharField(required=False, help_text="One state, or several comma-separated")
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    tenancy = serializers.CharField(required=False, help_text="Operators only: one tenant's leases")
    cursor = serializers.CharField(required=False)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=100)

    def validate_state(self, value):
        states = [s for s in value.split(",") if s]
        bad = sorted(set(states) - set(LeaseState.values))
        if bad:
            raise serializers.ValidationError(
                f"Unknown state(s) {', '.join(bad)}; one of {', '.join(LeaseState.values)}", code="invalid_choice")
        return states


class LeaseWaitSerializer(NoUnknownFieldsMixin, serializers.Serializer):
    wait = serializers.IntegerField(required=False, min_value=0, max_value=30,
                                    help_text="Seconds to wait for the first state change (≤ 30)")


class TenancySerializer(serializers.ModelSerializer):
    """A tenancy: the tenant's account and its Kubernetes onboarding state."""

    state = serializers.ChoiceField(choices=TenantState.choices)
    namespace = serializers.CharField()
    gpus_held = serializers.IntegerField(help_text="GPUs its unfinished leases hold or wait for")

    class Meta:
        model = Tenant
        fields = ("name", "display_name", "state", "namespace", "gpu_quota", "gpus_held", "failure_reason",
                  "created_at", "provisioning_at", "ready_at", "failed_at")


class LeasePageSerializer(serializers.Serializer):
    """One page of leases (cursor pagination: follow `next` until it is null)."""

    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = LeaseSerializer(many=True)


class WhoAmISerializer(serializers.Serializer):
    """Who the credentials are: a tenant's token or an operator (with its console role)."""

    kind = serializers.ChoiceField(choices=["tenant", "operator"])
    tenancy = serializers.CharField(allow_null=True)
    username = serializers.CharField(allow_null=True)
    role = serializers.CharField(allow_null=True)
