"""The tenants' REST API: thin views over tenants' services and selectors.

POST /api/v1/containers answers 202 from the transaction that records the lease (no agent or
cluster call on the request path); the lease then advances in workers. Leases are read through
`tenants.lease_documents` (scoped to the caller's tenant; operators see all).
"""

from __future__ import annotations

import hashlib
import re
import time

from django.db import connection
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from console import api_json
from console.audit import Actor
from console.models import Source
from console.pagination import CursorPagination
from tenants import selectors, services
from tenants.api.permissions import IsTenant, IsTenantOrOperator, caller_role, caller_tenant, has_role
from tenants.api.serializers import (
    ContainerCreateSerializer,
    LeaseFilterSerializer,
    LeasePageSerializer,
    LeaseSerializer,
    LeaseWaitSerializer,
    TenancySerializer,
    WhoAmISerializer,
)
from tenants.api.throttles import CreateRateThrottle, TokenRateThrottle
from tenants.constants import IDEMPOTENCY_KEY_MAX, LEASE_WAIT_POLL_S, ROLE_VIEWER
from tenants.idempotency import lease_request_once, request_digest
from tenants.lease_documents import LEASES_PATH, lease_document, lease_documents, lease_page_rows
from tenants.models import Lease

TENANT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,54}[a-z0-9])?")  # what validate_tenant_name accepts


def api_actor(request) -> Actor:
    """The actor of an API request: the token's tenant or the operator, with the request's id."""
    user = request.user
    user_id = getattr(user, "pk", None)
    return Actor(name=user.get_username()[:150], source=Source.API, user_id=user_id,
                 correlation_id=getattr(request, "correlation_id", ""))


def _release_pooled_connection() -> None:
    """Between polls, hand a pooled connection back (DATABASE_POOL): waiters must not hold the pool."""
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


class LeaseCursorPagination(CursorPagination):
    """Newest first by id: stable under inserts (new leases appear before the first page, never inside)."""

    ordering = "-id"
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


def _etag(data) -> str:
    return '"' + hashlib.sha256(api_json.dumps(data, sort_keys=True)).hexdigest()[:32] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _lease_response(data: dict, request, *, status_code=status.HTTP_200_OK, headers=None) -> Response:
    etag = _etag(data)
    headers = {"ETag": etag, "Cache-Control": "no-cache", **(headers or {})}
    if status_code == status.HTTP_200_OK and _matches(request.headers.get("If-None-Match", ""), etag):
        return Response(status=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(data, status=status_code, headers=headers)


class ContainerCreateView(APIView):
    permission_classes = [IsTenant]
    throttle_classes = [TokenRateThrottle, CreateRateThrottle]

    @extend_schema(
        operation_id="containers_create",
        request=ContainerCreateSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER,
                                     description="Retries with the same key and body return the original lease "
                                                 "(kept ≥ 24 h, ≤ 255 characters)")],
        responses={202: OpenApiResponse(LeaseSerializer, description="Recorded; Location names the lease")},
        tags=["containers"],
    )
    def post(self, request):
        tenant = caller_tenant(request)
        serializer = ContainerCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if data["tenancy"] != tenant.name:
            raise PermissionDenied(f"This token belongs to tenancy {tenant.name}, not {data['tenancy']}.")
        key = request.headers.get("Idempotency-Key", "")
        if len(key) > IDEMPOTENCY_KEY_MAX or (key and not key.isprintable()):
            raise ValidationError({"Idempotency-Key": [f"At most {IDEMPOTENCY_KEY_MAX} printable characters."]})

        def create(on_record=None) -> Lease:
            return services.lease_request(
                tenant_name=tenant.name, image=data["container-url"], gpu_count=data["gpus"],
                command=data.get("command"), args=data.get("args"), env=data.get("env"),
                max_pending_seconds=data.get("max_pending_seconds"), actor=api_actor(request), on_record=on_record,
            )

        replayed = False
        if key:
            lease, replayed = lease_request_once(token=request.auth, key=key, digest=request_digest(request.data),
                                                 create=create)
        else:
            lease = create()
        headers = {"Location": f"{LEASES_PATH}/{lease.pk}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return _lease_response(lease_document(lease.pk), request, status_code=status.HTTP_202_ACCEPTED,
                               headers=headers)


class LeaseListView(APIView):
    permission_classes = [IsTenantOrOperator]

    @extend_schema(operation_id="leases_list", parameters=[LeaseFilterSerializer],
                   responses=LeasePageSerializer, tags=["leases"])
    def get(self, request):
        filters = LeaseFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        f = filters.validated_data
        tenant = caller_tenant(request)
        if tenant is None and f.get("tenancy"):
            queryset = lease_page_rows(tenant_name=f["tenancy"])
        elif tenant is not None and f.get("tenancy") not in (None, tenant.name):
            raise PermissionDenied("A tenant's token sees only its own tenancy.")
        else:
            queryset = lease_page_rows(tenant=tenant)
        if f.get("state"):
            queryset = queryset.filter(state__in=f["state"])
        if f.get("created_after"):
            queryset = queryset.filter(created_at__gte=f["created_after"])
        if f.get("created_before"):
            queryset = queryset.filter(created_at__lt=f["created_before"])
        paginator = LeaseCursorPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(lease_documents(page))


class LeaseDetailView(APIView):
    permission_classes = [IsTenantOrOperator]

    def _lease(self, request, pk: int) -> dict:
        tenant = caller_tenant(request)
        try:
            return lease_document(pk, tenant=tenant)
        except Lease.DoesNotExist:
            raise NotFound(f"No lease {pk}.") from None

    @extend_schema(
        operation_id="leases_retrieve", parameters=[LeaseWaitSerializer,
            OpenApiParameter("If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER)],
        responses={200: LeaseSerializer, 304: OpenApiResponse(description="Not modified (ETag matches)")},
        tags=["leases"],
    )
    def get(self, request, pk: int):
        params = LeaseWaitSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        wait = params.validated_data.get("wait") or 0
        lease = self._lease(request, pk)
        if wait:
            lease = self._wait(request, lease, wait)
        return _lease_response(lease, request)

    def _wait(self, request, lease: dict, seconds: int) -> dict:
        """Long-poll: back at the first change of state or conditions (or of the representation the
        client holds, by If-None-Match), else after `seconds`. Holds no lock while it waits."""
        held = request.headers.get("If-None-Match", "")
        if held and not _matches(held, _etag(lease)):
            return lease  # the client's copy is already stale
        progress = Lease.objects.filter(pk=lease["id"]).values_list("state", "conditions")
        start = progress.first()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(LEASE_WAIT_POLL_S)
            now = progress.first()
            if now is not None and now != start:
                break
            _release_pooled_connection()
        return self._lease(request, lease["id"])

    @extend_schema(operation_id="leases_destroy", request=None,
                   responses={202: OpenApiResponse(LeaseSerializer, description="Releasing (or already ended)")},
                   tags=["leases"])
    def delete(self, request, pk: int):
        try:
            services.lease_release(lease=Lease(pk=pk), tenant=caller_tenant(request), actor=api_actor(request))
        except Lease.DoesNotExist:
            raise NotFound(f"No lease {pk}.") from None
        return _lease_response(lease_document(pk), request, status_code=status.HTTP_202_ACCEPTED)


class TenancyDetailView(APIView):
    permission_classes = [IsTenantOrOperator]

    @extend_schema(operation_id="tenancies_retrieve", responses=TenancySerializer, tags=["tenancies"])
    def get(self, request, name: str):
        tenant = caller_tenant(request)
        if tenant is not None and tenant.name != name:
            raise PermissionDenied("A tenant's token sees only its own tenancy.")
        if tenant is None and not has_role(request, ROLE_VIEWER):
            raise PermissionDenied()
        found = selectors.tenancy_for_api(name) if TENANT_NAME.fullmatch(name) else None
        if found is None:
            raise NotFound(f"No tenancy {name}.")
        return Response(TenancySerializer(found).data)




class WhoAmIView(APIView):
    """The cheapest authenticated call: who these credentials are (also the benchmark's baseline)."""

    permission_classes = [IsTenantOrOperator]

    @extend_schema(operation_id="me_retrieve", responses=WhoAmISerializer, tags=["tenancies"])
    def get(self, request):
        tenant = caller_tenant(request)
        if tenant is not None:
            data = {"kind": "tenant", "tenancy": tenant.name, "username": None, "role": None}
        else:
            data = {"kind": "operator", "tenancy": None, "username": request.user.get_username(),
                    "role": caller_role(request)}
        return Response(data)
