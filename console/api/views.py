"""Operator API: read the fleet (servers, GPUs, partitions, allocations, events) and run the console's
actions with the console's own preview and preview token (`fleet.previews`, through
`fleet.operator_actions`). Viewer reads; support acts."""

from __future__ import annotations

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from console.api import serializers as s
from console.models import AuditEvent, Operation
from console.pagination import CursorPagination
from fleet.models import Allocation, AllocationGpu, Gpu, Partition, Server
from fleet.operator_actions import action_run, actions_for, preview_action
from fleet.states import AllocationState, GpuState, PartitionState, ServerState
from tenants.api.permissions import IsOperator
from tenants.api.views import api_actor

MAX_ID = 2**63 - 1


class IdCursorPagination(CursorPagination):
    ordering = "id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 100


class NewestFirstPagination(IdCursorPagination):
    ordering = "-id"


class OperatorView:
    permission_classes = [IsOperator]


def _filter_serializer(name: str, fields: dict) -> type[serializers.Serializer]:
    def to_internal_value(self, data):
        unknown = sorted(set(data) - set(self.fields) - {"cursor", "page_size"})
        if unknown:
            raise serializers.ValidationError({n: ["Unknown filter."] for n in unknown})
        return serializers.Serializer.to_internal_value(self, data)

    return type(name, (serializers.Serializer,), {**fields, "to_internal_value": to_internal_value})


class FilteredListView(OperatorView, ListAPIView):
    """A list with validated filters (`filters`: query parameter → lookup): bad values are a 400."""

    pagination_class = IdCursorPagination
    filter_class: type[serializers.Serializer]
    lookups: dict[str, str] = {}

    def get_queryset(self):
        params = self.filter_class(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        queryset = self.base_queryset()
        for name, value in params.validated_data.items():
            queryset = queryset.filter(**{self.lookups[name]: value})
        return queryset


def _list_schema(filters, serializer, tag):
    return extend_schema(parameters=[filters], responses=serializer(many=True), tags=[tag])


ServerFilter = _filter_serializer("ServerFilter", {
    "state": serializers.ChoiceField(choices=ServerState.choices, required=False),
    "rack": serializers.CharField(required=False, max_length=32),
    "platform": serializers.CharField(required=False, max_length=32),
})
GpuFilter = _filter_serializer("GpuFilter", {
    "state": serializers.ChoiceField(choices=GpuState.choices, required=False),
    "server": serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID),
})
PartitionFilter = _filter_serializer("PartitionFilter", {
    "state": serializers.ChoiceField(choices=PartitionState.choices, required=False),
    "server": serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID),
    "size": serializers.IntegerField(required=False, min_value=1, max_value=64),
})
AllocationFilter = _filter_serializer("AllocationFilter", {
    "state": serializers.ChoiceField(choices=AllocationState.choices, required=False),
    "server": serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID),
    "owner": serializers.CharField(required=False, max_length=64),
})
EventFilter = _filter_serializer("EventFilter", {
    "verb": serializers.CharField(required=False, max_length=100, help_text="A verb prefix, e.g. fleet.gpu"),
    "target_type": serializers.CharField(required=False, max_length=50),
    "target_id": serializers.CharField(required=False, max_length=64),
    "correlation_id": serializers.CharField(required=False, max_length=64),
    "since": serializers.DateTimeField(required=False),
})
OperationFilter = _filter_serializer("OperationFilter", {
    "status": serializers.ChoiceField(choices=Operation.Status.choices, required=False),
    "kind": serializers.CharField(required=False, max_length=50),
})


@_list_schema(ServerFilter, s.ServerSerializer, "operator")
class ServerListView(FilteredListView):
    serializer_class = s.ServerSerializer
    filter_class = ServerFilter
    lookups = {"state": "state", "rack": "rack", "platform": "platform"}

    def base_queryset(self):
        return Server.objects.all()


@_list_schema(GpuFilter, s.GpuSerializer, "operator")
class GpuListView(FilteredListView):
    serializer_class = s.GpuSerializer
    filter_class = GpuFilter
    lookups = {"state": "state", "server": "server_id"}

    def base_queryset(self):
        return Gpu.objects.select_related("server")


@_list_schema(PartitionFilter, s.PartitionSerializer, "operator")
class PartitionListView(FilteredListView):
    serializer_class = s.PartitionSerializer
    filter_class = PartitionFilter
    lookups = {"state": "state", "server": "server_id", "size": "size"}

    def base_queryset(self):
        return Partition.objects.all()


@_list_schema(AllocationFilter, s.AllocationSerializer, "operator")
class AllocationListView(FilteredListView):
    serializer_class = s.AllocationSerializer
    filter_class = AllocationFilter
    pagination_class = NewestFirstPagination
    lookups = {"state": "state", "server": "server_id", "owner": "owner"}

    def base_queryset(self):
        return Allocation.objects.select_related("partition").prefetch_related(
            Prefetch("allocation_gpus", queryset=AllocationGpu.objects.select_related("gpu")))


@_list_schema(EventFilter, s.EventSerializer, "operator")
class EventListView(FilteredListView):
    serializer_class = s.EventSerializer
    filter_class = EventFilter
    pagination_class = NewestFirstPagination
    lookups = {"verb": "verb__startswith", "target_type": "target_type", "target_id": "target_id",
               "correlation_id": "correlation_id", "since": "at__gte"}

    def base_queryset(self):
        return AuditEvent.objects.all()


@_list_schema(OperationFilter, s.OperationSerializer, "operator")
class OperationListView(FilteredListView):
    serializer_class = s.OperationSerializer
    filter_class = OperationFilter
    pagination_class = NewestFirstPagination
    lookups = {"status": "status", "kind": "kind"}

    def base_queryset(self):
        return Operation.objects.all()


@extend_schema(tags=["operator"])
class ServerDetailView(OperatorView, RetrieveAPIView):
    serializer_class = s.ServerSerializer
    queryset = Server.objects.all()


@extend_schema(tags=["operator"])
class GpuDetailView(OperatorView, RetrieveAPIView):
    serializer_class = s.GpuSerializer
    queryset = Gpu.objects.select_related("server")


@extend_schema(tags=["operator"])
class OperationDetailView(OperatorView, RetrieveAPIView):
    serializer_class = s.OperationSerializer
    queryset = Operation.objects.all()


class ActionView(OperatorView, APIView):
    """POST …/{id}/<action>/: `{"dry_run": true}` previews (200, with a token); `{"preview_token": …}`
    confirms (202, the Operation); a change since the preview is a 409 carrying a fresh preview."""

    model: type = Server
    action = ""

    def post(self, request, pk: int):
        body = s.ActionRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        target = get_object_or_404(self.model, pk=pk)
        if body.validated_data["dry_run"]:
            preview = preview_action(action=self.action, target=target)
            return Response(s.PreviewSerializer(preview.as_dict()).data)
        operation = action_run(action=self.action, target=target, token=body.validated_data["preview_token"],
                               actor=api_actor(request))
        return Response(s.OperationSerializer(operation).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/v1/operations/{operation.pk}"})


_ACTION_SCHEMA = {
    "request": s.ActionRequestSerializer,
    "responses": {200: OpenApiResponse(s.PreviewSerializer, description="Dry run: the preview"),
                  202: OpenApiResponse(s.OperationSerializer, description="Confirmed: the Operation")},
    "parameters": [OpenApiParameter("id", int, OpenApiParameter.PATH)],
    "tags": ["operator"],
}


def _post_of(view: type) -> object:
    def post(self, request, pk: int):
        return ActionView.post(self, request, pk)

    post.__doc__ = view.__doc__
    return post


def action_views() -> list[tuple[str, str, type]]:
    """(target type, action, view class) for every operator action."""
    out = []
    for target_type, model in (("server", Server), ("gpu", Gpu)):
        for action in actions_for(target_type):
            name = f"{target_type.title()}{action.title().replace('-', '')}ActionView"
            view = type(name, (ActionView,), {"model": model, "action": action,
                                              "__doc__": f"{action} a {target_type} (preview, then confirm)."})
            view.post = extend_schema(operation_id=f"{target_type}s_{action.replace('-', '_')}", **_ACTION_SCHEMA)(
                _post_of(view))
            out.append((target_type, action, view))
    return out
