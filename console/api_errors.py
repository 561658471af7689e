"""One error shape for every non-2xx answer of the API: RFC 9457 `application/problem+json`.

`exception_handler` (DRF's hook) maps domain exceptions to HTTP (409/400/404/422/503) and DRF's own
errors to problems; `ProblemMiddleware` turns every other non-2xx answer under /api/ (Django's 404,
405, 500, a body too large) into the same shape, and enforces the request body limit before any view
runs. Infrastructure: imports no app.

    {"type": "https://gpu-console.dev/problems/<code>", "title": ..., "status": 409, "detail": ...,
     "code": "<code>", "instance": "/api/v1/…", "request_id": "…",
     "errors": [{"field": "gpus", "code": "invalid_gpu_count", "message": "…"}]}
"""

from __future__ import annotations

import io
import json
import logging
from http import HTTPStatus

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpResponse
from rest_framework import exceptions, status

from console import correlation
from console.errors import Conflict, DomainError, NotFound, ServiceUnavailable
from console.statemachine import InvalidTransition
from hardware.exceptions import HardwareError

log = logging.getLogger(__name__)
PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://gpu-console.dev/problems/"
API_PREFIX = "/api/"

# The stable `code` of a problem from its status, when nothing more precise is known.
STATUS_CODES = {
    400: "invalid", 401: "not_authenticated", 403: "permission_denied", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 412: "precondition_failed",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable", 429: "throttled",
    500: "server_error", 503: "unavailable",
}


def problem(status_code: int, *, code: str = "", detail: str = "", errors: list[dict] | None = None,
            instance: str = "", request_id: str = "", **extra) -> dict:
    code = code or STATUS_CODES.get(status_code, "error")
    try:
        title = HTTPStatus(status_code).phrase
    except ValueError:
        title = "Error"
    body = {"type": PROBLEM_TYPE_BASE + code, "title": title, "status": status_code, "detail": detail or title,
            "code": code, "instance": instance, "request_id": request_id or correlation.current(),
            "errors": errors or []}
    body.update(extra)
    return body


def problem_response(status_code: int, **kwargs) -> HttpResponse:
    """A plain Django response in the problem shape (outside DRF views)."""
    headers = kwargs.pop("headers", None) or {}
    body = json.dumps(problem(status_code, **kwargs), cls=DjangoJSONEncoder)
    response = HttpResponse(body, status=status_code, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in headers.items():
        response[name] = value
    return response


def _field_errors(detail, prefix: str = "") -> list[dict]:
    """DRF's nested error details (`get_full_details()`) as a flat list of {field, code, message}."""
    out: list[dict] = []
    if isinstance(detail, dict) and {"message", "code"} <= set(detail):
        return [{"field": prefix or "non_field_errors", "code": str(detail["code"]), "message": str(detail["message"])}]
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = prefix if key in ("non_field_errors", "detail") and prefix else (
                f"{prefix}.{key}" if prefix else str(key))
            out.extend(_field_errors(value, name))
    elif isinstance(detail, list):
        for i, value in enumerate(detail):
            nested = isinstance(value, dict) and not ({"message", "code"} <= set(value))
            out.extend(_field_errors(value, f"{prefix}[{i}]" if nested else prefix))
    return out


def _django_validation_errors(exc: DjangoValidationError) -> list[dict]:
    if hasattr(exc, "error_dict"):
        return [{"field": field, "code": e.code or "invalid", "message": " ".join(e.messages)}
                for field, errs in exc.error_dict.items() for e in errs]
    return [{"field": "non_field_errors", "code": e.code or "invalid", "message": " ".join(e.messages)}
            for e in exc.error_list]


def exception_handler(exc, context):
    request = context.get("request")
    instance = request.path if request is not None else ""
    headers: dict[str, str] = {}
    errors: list[dict] = []
    code = ""
    if isinstance(exc, DjangoValidationError):
        status_code, errors, detail, code = 400, _django_validation_errors(exc), "The request is invalid.", "invalid"
    elif isinstance(exc, exceptions.ValidationError):
        status_code, detail, code = 400, "The request is invalid.", "invalid"
        errors = _field_errors(exc.get_full_details())
    elif isinstance(exc, InvalidTransition | Conflict):
        status_code, detail = 409, str(exc)
    elif isinstance(exc, NotFound | Http404):
        status_code, detail = 404, str(exc) or "Not found."
    elif isinstance(exc, PermissionDenied):
        status_code, detail = 403, str(exc) or "You do not have permission to perform this action."
    elif isinstance(exc, ServiceUnavailable):
        status_code, detail = 503, str(exc)
    elif isinstance(exc, HardwareError):
        status_code, detail = (503 if exc.retryable else 409), str(exc)
    elif isinstance(exc, DomainError):
        status_code = getattr(exc, "status_code", 400)
        detail, code = str(exc), getattr(exc, "code", "")
    elif isinstance(exc, exceptions.APIException):
        status_code = exc.status_code
        full = exc.get_full_details()
        detail = str(exc.detail) if not isinstance(exc.detail, dict | list) else "The request is invalid."
        code = full.get("code", "") if isinstance(full, dict) else ""
        if isinstance(exc, exceptions.Throttled):
            code = "throttled"
            if exc.wait is not None:
                headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            code = "not_authenticated" if isinstance(exc, exceptions.NotAuthenticated) else "authentication_failed"
    else:
        return None  # a bug: Django's 500 (turned into a problem by ProblemMiddleware)
    code = code or getattr(exc, "code", "") if isinstance(exc, DomainError) else code
    # A plain response, rendered here: JSON whatever renderer the view negotiated (the schema view's is YAML).
    return problem_response(status_code, code=code, detail=detail, errors=errors, instance=instance,
                            headers=headers, **getattr(exc, "problem_extra", {}))


class ProblemMiddleware:
    """Under /api/: refuse a body over API_MAX_BODY_BYTES before any view runs (413, also for chunked
    bodies, which carry no Content-Length), and give every non-2xx answer the problem shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(API_PREFIX) or request.path.startswith("/api/docs"):
            return self.get_response(request)
        too_big = self._body_too_big(request)
        if too_big is not None:
            return too_big
        try:
            response = self.get_response(request)
        except Exception:  # pragma: no cover - Django converts exceptions before this point
            log.exception("unhandled error on %s", request.path)
            response = problem_response(500, instance=request.path)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith(PROBLEM_CONTENT_TYPE):
            detail = ""
            if response.status_code == 405:
                detail = f"Method {request.method} is not allowed here."
            converted = problem_response(response.status_code, detail=detail, instance=request.path,
                                         request_id=response.get("X-Request-Id", ""))
            for header in ("Allow", "Retry-After", "WWW-Authenticate", "X-Request-Id"):
                if response.has_header(header):
                    converted[header] = response[header]
            response = converted
        return response

    def _body_too_big(self, request) -> HttpResponse | None:
        limit = settings.API_MAX_BODY_BYTES
        length = request.META.get("CONTENT_LENGTH") or ""
        if length:
            try:
                declared = int(length)
            except ValueError:
                return problem_response(400, detail="Content-Length is not a number.", instance=request.path)
            if declared > limit:
                return self._413(request, limit)
            return None
        if request.method not in ("POST", "PUT", "PATCH", "DELETE"):
            return None
        # A chunked body: read at most one byte past the limit, then hand the rest what was read.
        data = request.read(limit + 1)
        if len(data) > limit:
            return self._413(request, limit)
        request._body = data
        request._stream = io.BytesIO(data)
        request.META["CONTENT_LENGTH"] = str(len(data))
        return None

    @staticmethod
    def _413(request, limit: int) -> HttpResponse:
        return problem_response(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, code="payload_too_large",
                                detail=f"The request body is larger than {limit} bytes.", instance=request.path)
