"""The service's request errors: each names the field at fault and carries its HTTP status, so
`bandit_router.api` maps every one to a 4xx ``{"detail": "<field>: <what is wrong>"}``."""

from __future__ import annotations

from streams import EventError


class ServiceError(Exception):
    """A request the service cannot serve; ``field`` names the part of the request at fault."""

    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidRequestError(ServiceError):
    """The request contradicts itself or the service's state (unknown model, policy, ...)."""


class NotFoundError(ServiceError):
    """The decision or model named in the request does not exist."""

    status = 404


class ConflictError(ServiceError):
    """The request is fine but the service's state cannot serve it (e.g. no enabled model)."""

    status = 409


def field_of(error: EventError) -> str:
    """The field an `EventError` message names (``field 'quality' must ...``)."""
    message = str(error)
    start = message.find("'")
    end = message.find("'", start + 1)
    return message[start + 1 : end] if 0 <= start < end else "body"
