"""Label Studio webhooks: answered at once (Label Studio waits 1 s); nothing slow runs in the request.

What an event starts is injected by the app: the correction store that records annotations, the
training starter (a thread or a train job), the pre-annotation planner (a batch job). This module
talks to no queue and no Redis itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from .corrections import CorrectionStore
from .errors import RequestError
from .labelstudio.annotations import corrections_from_webhook
from .labelstudio.tasks import valid_id
from .settings import Settings

if TYPE_CHECKING:
    from .learning import StartTraining

# (project id, new task ids) -> {"queue", "job"} of the planning job (queue/planner.planning_starter)
QueuePreannotation = Callable[[int, list[int]], dict]

MAX_ACTION_CHARS = 64  # an unknown action is echoed back: never a long one

ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"})

# every action Label Studio 1.23 emits
KNOWN_ACTIONS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
    "TASKS_CREATED", "TASKS_DELETED", "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED",
    "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED", "START_TRAINING",
})


def handle_webhook(body: dict, settings: Optional[Settings] = None,
                   queue_preannotation: Optional[QueuePreannotation] = None,
                   start_training: Optional["StartTraining"] = None,
                   store: Optional[CorrectionStore] = None) -> dict:
    """Validate and acknowledge one event; the reply says what was done. Nothing slow happens here.

    - ANNOTATION_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_CREATED: the annotations are checked and
      recorded as corrections (unusable ones are recorded as rejected, with the reason); every
      SEGAGENT_TRAIN_EVERY new corrections of a project start a training round.
    - ANNOTATIONS_DELETED / TASKS_DELETED: their corrections leave the next round.
    - START_TRAINING: a round on every annotated task of the project (pulled from Label Studio when
      LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY are set, else the recorded corrections). Its body has no
      ``annotation`` or ``task`` key, and nothing here reads one.
    - TASKS_CREATED: one pre-annotation planning job when SEGAGENT_PREANNOTATE_ON_CREATE is on.
    ``start_training`` runs or queues a round (None: training is not available in this process);
    ``queue_preannotation`` queues the planning job (None: no queue in this process); ``store`` records
    corrections (default: ``MODEL_DIR/corrections``).
    """
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise RequestError("action: the webhook body needs an 'action' string", field="action")
    if action not in KNOWN_ACTIONS:
        if len(action) > MAX_ACTION_CHARS or not action.isprintable():
            raise RequestError(f"action: not a Label Studio action (at most {MAX_ACTION_CHARS} printable characters)",
                               field="action")
        return {"status": "ok", "action": action, "known": False,
                "note": f"unknown action {action!r}: nothing done"}
    reply = {"status": "ok", "action": action, "known": True, "note": "acknowledged"}
    if action == "TASKS_CREATED":
        reply.update(_tasks_created(body, settings, queue_preannotation))
    elif settings is not None:
        store = store or CorrectionStore.from_settings(settings)
        if action in ANNOTATION_ACTIONS:
            reply.update(_record(body, action, settings, store, start_training))
        elif action in ("ANNOTATIONS_DELETED", "TASKS_DELETED"):
            reply.update(_forget(body, action, store))
        elif action == "START_TRAINING":
            reply.update(_start_training(body, settings, store, start_training))
    return reply


def _record(body: dict, action: str, settings: Settings, store: CorrectionStore,
            start_training: Optional["StartTraining"]) -> dict:
    good, bad = corrections_from_webhook(body, settings.expression_field)
    store.check_room(good, bad)  # past SEGAGENT_CORRECTIONS_MAX_MB: 507, nothing written
    counts = store.record(good)
    store.reject(bad, action)
    # an update that made an annotation unusable (its mask erased) must not leave the old version to train on
    store.delete_annotations([r.annotation_id for r in bad if _is_id(r.annotation_id)])
    reply: dict = {"recorded": [c.annotation_id for c in good],
                   "rejected": [{"task": r.task_id, "annotation": r.annotation_id, "reason": r.reason} for r in bad]}
    # an event without a project never starts a round: it would train on every project's corrections
    due = [p for p in counts if p is not None and start_training is not None
           and store.claim_round(p, settings.train_every)]
    if due:
        reply["training"] = [_start(settings, store, p, "corrections", start_training) for p in due]
    reply["note"] = f"{len(good)} correction(s) recorded, {len(bad)} rejected"
    if None in counts:
        reply["note"] += "; the event names no project, so it starts no training round"
    return reply


def _forget(body: dict, action: str, store: CorrectionStore) -> dict:
    key = "annotations" if action == "ANNOTATIONS_DELETED" else "tasks"
    items = body.get(key)
    if not isinstance(items, list):
        raise RequestError(f"{key}: {action} needs an '{key}' list", field=key)
    ids = [i.get("id") if isinstance(i, dict) else None for i in items]
    bad = next((n for n, i in enumerate(ids) if not _is_id(i)), None)
    if bad is not None:
        raise RequestError(f"{key}[{bad}].id: every item of '{key}' needs a positive integer 'id'",
                           field=f"{key}[{bad}].id")
    removed = store.delete_annotations(ids) if key == "annotations" else store.delete_tasks(ids)
    return {"removed": removed, "note": f"{removed} correction(s) removed from the next training round"}


def _start_training(body: dict, settings: Settings, store: CorrectionStore,
                    start_training: Optional["StartTraining"]) -> dict:
    project = body.get("project")
    project = project.get("id") if isinstance(project, dict) else project
    if not _is_id(project):
        raise RequestError("project.id: START_TRAINING needs 'project': {'id': <positive int>}", field="project.id")
    if start_training is None:
        return {"note": "acknowledged; training does not run in this process"}
    data_from = "labelstudio" if settings.label_studio_url and settings.label_studio_api_key else "corrections"
    started = _start(settings, store, project, data_from, start_training)
    return {"training": started, "note": f"training round on {data_from}: {started.get('note', 'started')}"}


def _start(settings: Settings, store: CorrectionStore, project: Optional[int], data_from: str,
           start_training: "StartTraining") -> dict:
    if not settings.policy:  # a round could only fail: say so instead of starting one
        return {"project": project, "started": False, "note": "not started: set SEGAGENT_POLICY (the base policy)"}
    store.training_started(project)  # what arrives from now on counts towards the next round
    return {"project": project, "source": data_from, "started": True, **start_training(project, data_from)}


def _tasks_created(body: dict, settings: Optional[Settings],
                   queue_preannotation: Optional[QueuePreannotation]) -> dict:
    """Queue pre-annotation of the new tasks, or say why nothing was done."""
    why_not = _preannotation_off(settings, queue_preannotation)
    if why_not:
        return {"note": f"acknowledged; new tasks are not pre-annotated: {why_not}"}
    project, task_ids = parse_tasks_created(body)
    queued = queue_preannotation(project, task_ids)
    return {"note": f"pre-annotation of {len(task_ids)} new task(s) queued",
            "enqueued": {"queue": queued["queue"], "job": queued["job"], "project": project, "task_ids": task_ids}}


def _preannotation_off(settings: Optional[Settings], queue_preannotation: Optional[QueuePreannotation]
                       ) -> Optional[str]:
    """Why a TASKS_CREATED event starts nothing (None: it does)."""
    if settings is None or not settings.preannotate_on_create:
        return "SEGAGENT_PREANNOTATE_ON_CREATE is off"
    if not settings.redis_url or queue_preannotation is None:
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
        raise RequestError("project.id: TASKS_CREATED needs 'project': {'id': <positive int>}", field="project.id")
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise RequestError("tasks: TASKS_CREATED needs a non-empty 'tasks' list", field="tasks")
    ids = [task.get("id") if isinstance(task, dict) else None for task in tasks]
    bad = next((n for n, i in enumerate(ids) if not _is_id(i)), None)
    if bad is not None:
        raise RequestError(f"tasks[{bad}].id: every task of TASKS_CREATED needs a positive integer 'id'",
                           field=f"tasks[{bad}].id")
    return project, list(dict.fromkeys(ids))  # a repeated id is queued once


def _is_id(value: Any) -> bool:
    # bool is an int subclass: True is no task id; ids are positive 64-bit integers
    return valid_id(value) is not None
