"""Label Studio webhooks: acknowledged at once (Label Studio waits 1 s), never worked on in the request."""
from __future__ import annotations

from typing import Any, Callable, Optional

import redis
from rq import Queue

from .errors import RequestError
from .settings import Settings

# every action Label Studio 1.23 emits
KNOWN_ACTIONS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
    "TASKS_CREATED", "TASKS_DELETED", "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED",
    "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED", "START_TRAINING",
})


def handle_webhook(body: dict, settings: Optional[Settings] = None,
                   batch_queue: Optional[Callable[[], Queue]] = None) -> dict:
    """Validate and acknowledge one event. Returns the JSON reply.

    ``TASKS_CREATED`` queues one planning job for the new tasks when SEGAGENT_PREANNOTATE_ON_CREATE
    is on (``batch_queue`` gives the queue; None in embedded mode). Recording corrections and training
    on them (ANNOTATION_*, START_TRAINING) is not served by this version: the reply says so rather
    than pretending. ``START_TRAINING`` bodies have no ``annotation`` or ``task`` key, and nothing
    here reads one.
    """
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise RequestError("webhook body needs an 'action' string")
    if action not in KNOWN_ACTIONS:
        return {"status": "ok", "action": action, "known": False,
                "note": f"unknown action {action!r}: nothing done"}
    reply = {"status": "ok", "action": action, "known": True,
             "note": "acknowledged; learning from annotations is not enabled in this version"}
    if action == "TASKS_CREATED":
        reply.update(_tasks_created(body, settings, batch_queue))
    return reply


def _tasks_created(body: dict, settings: Optional[Settings], batch_queue: Optional[Callable[[], Queue]]) -> dict:
    """Queue pre-annotation of the new tasks, or say why nothing was done."""
    why_not = _preannotation_off(settings, batch_queue)
    if why_not:
        return {"note": f"acknowledged; new tasks are not pre-annotated: {why_not}"}
    project, task_ids = parse_tasks_created(body)
    from .queue.dispatch import QueueUnavailable
    from .queue.preannotate import enqueue_planning

    queue = batch_queue()
    try:
        job_id = enqueue_planning(queue, project, task_ids, settings)
    except redis.RedisError as exc:
        raise QueueUnavailable(exc) from None
    return {"note": f"pre-annotation of {len(task_ids)} new task(s) queued",
            "enqueued": {"queue": queue.name, "job": job_id, "project": project, "task_ids": task_ids}}


def _preannotation_off(settings: Optional[Settings], batch_queue: Optional[Callable[[], Queue]]) -> Optional[str]:
    """Why a TASKS_CREATED event starts nothing (None: it does)."""
    if settings is None or not settings.preannotate_on_create:
        return "SEGAGENT_PREANNOTATE_ON_CREATE is off"
    if not settings.redis_url or batch_queue is None:
        return "REDIS_URL is not set (pre-annotation runs on queue workers)"
    if not settings.label_studio_url or not settings.label_studio_api_key:
        return "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are needed to post predictions"
    return None


def parse_tasks_created(body: dict) -> tuple[int, list[int]]:
    """The project id and the new task ids of a TASKS_CREATED body; RequestError (400) when malformed."""
    project: Any = body.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    if not _is_id(project):
        raise RequestError("TASKS_CREATED needs 'project': {'id': <int>}")
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise RequestError("TASKS_CREATED needs a non-empty 'tasks' list")
    ids = [task.get("id") if isinstance(task, dict) else None for task in tasks]
    if not all(_is_id(i) for i in ids):
        raise RequestError("every task of TASKS_CREATED needs an integer 'id'")
    return project, list(dict.fromkeys(ids))  # a repeated id is queued once


def _is_id(value: Any) -> bool:
    # bool is an int subclass: True is no task id
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
