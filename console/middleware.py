"""Request-scoped correlation id, so audit events of one request can be found together."""

import uuid

from console import correlation


class CorrelationIdMiddleware:
    header = "HTTP_X_REQUEST_ID"

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.META.get(self.header, "")
        request.correlation_id = incoming[:64] if incoming else uuid.uuid4().hex
        with correlation.bound(request.correlation_id):
            response = self.get_response(request)
        response["X-Request-Id"] = request.correlation_id
        return response
