"""Errors the service turns into JSON replies."""
from __future__ import annotations


class RequestError(ValueError):
    """The caller sent something we cannot use; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class MediaError(RequestError):
    """A task's image could not be fetched or decoded."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message, status)


class ModelUnavailable(RuntimeError):
    """The model is still loading or failed to load (HTTP 503)."""


class QueueUnavailable(RequestError):
    """Redis does not answer: the request cannot be queued (HTTP 503)."""

    def __init__(self, exc: Exception):
        super().__init__(f"the job queue (Redis) is unreachable: {type(exc).__name__}: {exc}", 503)


NO_POLICY = (
    "automatic predictions need a SegAgent policy model: set SEGAGENT_POLICY (a model folder or hub id); "
    "without one, segment interactively with the smart KeyPointLabels/RectangleLabels tools"
)
