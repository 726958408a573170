"""Errors the service turns into JSON replies."""
from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """The caller sent something we cannot use; ``status`` is the HTTP status to answer with, ``field``
    the path of the field at fault (``tasks[0].data``) when there is one."""

    def __init__(self, message: str, status: int = 400, field: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = field


class MediaError(RequestError):
    """A task's image could not be fetched or decoded."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message, status)


class ModelUnavailable(RuntimeError):
    """The model is still loading or failed to load (HTTP 503)."""


class QueueUnavailable(RequestError):
    """Redis does not answer: the request cannot be queued (HTTP 503)."""

    def __init__(self, exc: Exception):
        # what Redis said goes to the log, not to the caller
        log.warning("the job queue (Redis) is unreachable: %s: %s", type(exc).__name__, exc)
        super().__init__("the job queue (Redis) is unreachable", 503)


NO_POLICY = (
    "automatic predictions need a SegAgent policy model: set SEGAGENT_POLICY (a model folder or hub id), "
    "or SEGAGENT_TEXT_MODEL (a SAM 3 text model, e.g. facebook/sam3) for masks from the expression alone; "
    "without either, segment interactively with the smart KeyPointLabels/RectangleLabels tools"
)

#: what an audit (the policy's estimate of a mask) answers without a policy: a text model cannot judge masks
NO_AUDIT_POLICY = ("an audit needs a SegAgent policy model: set SEGAGENT_POLICY (a model folder or hub id); "
                   "SEGAGENT_TEXT_MODEL alone cannot judge a mask")
