"""Label Studio webhooks: acknowledged at once (Label Studio waits 1 s), never worked on in the request."""
from __future__ import annotations

from .errors import RequestError

# every action Label Studio 1.23 emits
KNOWN_ACTIONS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
    "TASKS_CREATED", "TASKS_DELETED", "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED",
    "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED", "START_TRAINING",
})


def handle_webhook(body: dict) -> dict:
    """Validate and acknowledge one event. Returns the JSON reply.

    Recording corrections and training on them (ANNOTATION_*, START_TRAINING) is not served by this
    version: the reply says so rather than pretending. ``START_TRAINING`` bodies have no
    ``annotation`` or ``task`` key, and nothing here reads one.
    """
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise RequestError("webhook body needs an 'action' string")
    if action not in KNOWN_ACTIONS:
        return {"status": "ok", "action": action, "known": False,
                "note": f"unknown action {action!r}: nothing done"}
    return {"status": "ok", "action": action, "known": True,
            "note": "acknowledged; learning from annotations is not enabled in this version"}
