"""OpenAPI post-processing: one `Problem` component (RFC 9457) and the error answers of every operation.

Every operation documents the problems it can answer with — 400 (field errors), 401, 403, 404, 405,
413, 415, 429 and 500, plus 409/422 where a create or an action can conflict — all as the one
`Problem` component under `application/problem+json`. Infrastructure: imports no app.
"""

from __future__ import annotations

from console.api_errors import PROBLEM_CONTENT_TYPE

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details, the body of every non-2xx answer.",
    "required": ["type", "title", "status", "detail", "code", "errors"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "Stable machine-readable code, e.g. `not_found`, `throttled`"},
        "instance": {"type": "string"},
        "request_id": {"type": "string", "description": "X-Request-Id of the request (finds its audit events)"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "code", "message"],
                "properties": {"field": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "preview": {"type": "object", "additionalProperties": True,
                    "description": "On a 409 of an operator action whose preview went stale: a fresh preview"},
    },
}
COMMON = {
    "400": "Bad input: `errors` names each field.",
    "401": "No or bad credentials.",
    "403": "Not allowed for this token or role.",
    "404": "No such object (or not yours).",
    "405": "Method not allowed.",
    "413": "Request body too large.",
    "415": "Unsupported media type (send JSON).",
    "429": "Throttled: see Retry-After.",
    "500": "Server error: the request id finds its log.",
}
WRITES = {
    "409": "Conflicts with the current state (code `quota_exceeded`: the tenancy's GPU quota; "
           "`idempotency_key_in_flight`: the first request with this key is still running).",
    "422": "Idempotency-Key reused with a different body.",
}


def problem_responses(result, generator, request, public):
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    ref = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            answers = dict(COMMON)
            if method in ("post", "delete", "put", "patch"):
                answers.update(WRITES)
            if method == "get" and path.startswith("/api/schema"):
                answers = {k: v for k, v in answers.items() if k in ("405", "500")}
            responses = operation.setdefault("responses", {})
            for code, description in answers.items():
                responses.setdefault(code, {"description": description, "content": ref})
            responses.setdefault("default", {"description": "Any other error", "content": ref})
    return result
