"""Base domain exceptions shared by apps; the API handler and the UI map them to answers."""


class DomainError(Exception):
    """A request the domain refuses (HTTP 400)."""


class Conflict(DomainError):
    """The request conflicts with the current state (HTTP 409)."""


class ServiceUnavailable(DomainError):
    """A dependency is down; try again later (HTTP 503)."""


class NotFound(DomainError):
    """The object named does not exist (HTTP 404)."""
