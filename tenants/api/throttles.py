"""Rate limits per token (or session user, or address): one scope for every call, one for creates.
State lives in the cache (Redis in production); a 429 carries Retry-After (console.api_errors)."""

from rest_framework.throttling import SimpleRateThrottle


class TokenRateThrottle(SimpleRateThrottle):
    scope = "api"

    def get_cache_key(self, request, view):
        token = getattr(request, "auth", None)
        if token is not None and getattr(token, "pk", None):
            ident = f"token-{token.pk}"
        elif request.user is not None and getattr(request.user, "pk", None):
            ident = f"user-{request.user.pk}"
        else:
            ident = f"addr-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class CreateRateThrottle(TokenRateThrottle):
    """Creates (POST /api/v1/containers) only."""

    scope = "create"

    def allow_request(self, request, view):
        if request.method != "POST":
            return True
        return super().allow_request(request, view)
