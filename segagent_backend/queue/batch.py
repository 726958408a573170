"""The batch jobs a worker executes for ``segagent preannotate`` and ``segagent refine`` (``planner`` queues
them): fetch each task of a chunk fresh, skip those that already hold what the job writes (so a second
run, or a job retried after its worker died, posts nothing twice), predict the chunk in lockstep (or
refine each task's latest brush mask) and post the answers through Label Studio's API. A job's result
names what happened to each of its tasks (``outcome``), which the planner's progress bar counts."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from ..labelstudio.brush import REFINED_PREFIX, AnnotationError, start_mask
from ..labelstudio.client import label_studio
from ..labelstudio.config import parse_label_config
from ..labelstudio.request import PredictRequest
from .context import WorkerContext, require
from .jobs import predict_with_retries

log = logging.getLogger(__name__)

#: where ``segagent refine`` takes the masks it refines from
REFINE_FROM = ("predictions", "annotations")
#: what happened to one task of a batch job (``run`` returns one per task, in ``tasks``)
WRITTEN, SKIPPED, FAILED = "written", "skipped", "failed"
FIRST_REASONS = 5  # how many failed (and skipped) tasks a summary names with their reasons


def refined_version(version: str) -> str:
    """The model version of a prediction refined by ``version``."""
    return REFINED_PREFIX + version


def outcome(task_id: Any, status: str, reason: str = "") -> dict:
    return {"task": task_id, "outcome": status, "reason": reason}


@dataclass(frozen=True)
class BatchJob:
    """One chunk of a project's tasks for a worker (JSON: ``to_json``, the keys the planner has always sent).

    ``model_version``: the version the planner planned for (a worker serving another refuses the job);
    ``refine_from`` ("predictions" or "annotations"): refine that brush mask of each task instead of
    predicting from nothing (``from_version``: only predictions of that version)."""

    project: int
    task_ids: list
    model_version: str
    force: bool = False
    refine_from: Optional[str] = None
    from_version: Optional[str] = None

    @property
    def posted_version(self) -> str:
        """The model version the job's predictions carry (what makes a task skipped next time)."""
        return self.model_version if self.refine_from is None else refined_version(self.model_version)

    def to_json(self) -> dict:
        data = {"project": self.project, "task_ids": self.task_ids, "model_version": self.model_version,
                "force": self.force}
        if self.refine_from is not None:
            data |= {"from": self.refine_from, "source_version": self.from_version}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "BatchJob":
        return cls(data["project"], data["task_ids"], data["model_version"], bool(data.get("force")),
                   data.get("from"), data.get("source_version"))


def run(data: dict, context: Optional[WorkerContext] = None) -> dict:
    """The worker's side of a batch job: predict (or refine) one chunk and post the predictions; a summary
    is the job's result. Tasks without a mask to refine are reported under ``errors``."""
    predictions = require(context, "run").predictions
    job = BatchJob.from_json(data)
    if predictions.model_version != job.model_version:
        # another model answers here than the one the command planned for: posting would mislabel
        raise RuntimeError(f"this worker serves {predictions.model_version}, the job wants {job.model_version}")
    settings = predictions.settings
    ls = label_studio(settings)
    label_config = ls.projects.get(id=job.project).label_config
    tasks, masks, skipped, errors = [], [], [], {}
    for task_id in job.task_ids:
        task = ls.tasks.get(id=str(task_id))
        if job.posted_version in {p.model_version for p in task.predictions or []} and not job.force:
            skipped.append(task_id)  # posted by an earlier run of this job or of the command
            continue
        if job.refine_from is not None:
            try:
                masks.append(start_mask(task, job.refine_from, job.from_version))
            except AnnotationError as exc:
                errors[str(task_id)] = str(exc)
                continue
        tasks.append({"id": task.id, "data": task.data})
    # the project's config came from Label Studio, not through a web process: parsed once, here
    config = parse_label_config(label_config, settings.expression_field, settings.max_label_config_kb * 1024) \
        if tasks else None
    if not tasks:
        answers = []
    elif job.refine_from is None:
        answers = predict_with_retries(predictions, PredictRequest(tasks, config, None, job.project))
    else:
        answers = [dict(a, model_version=job.posted_version) if "result" in a else a
                   for a in predictions.refine(tasks, config, masks, job.project)]
    posted, failed = _post(ls, job.project, tasks, answers)
    return _summary(job, posted, skipped, errors | failed)


def _summary(job: BatchJob, posted: list, skipped: list, errors: dict) -> dict:
    """A batch job's result: the task ids posted and skipped, the errors by task id, and ``tasks``: one
    outcome per task of the job, in the job's order (what ``segagent preannotate``/``refine`` count)."""
    skip_reason = f"already holds a prediction of {job.posted_version}"
    done = {**{t: outcome(t, WRITTEN) for t in posted}, **{t: outcome(t, SKIPPED, skip_reason) for t in skipped},
            **{int(t): outcome(int(t), FAILED, str(r)) for t, r in errors.items()}}
    tasks = [done.get(t) or outcome(t, FAILED, "no answer for this task") for t in job.task_ids]
    if errors:
        log.warning("project %s: %d of %d task(s) not written: %s", job.project, len(errors), len(job.task_ids),
                    "; ".join(f"task {t}: {r}" for t, r in list(errors.items())[:FIRST_REASONS]))
    return {"posted": posted, "skipped": skipped, "errors": errors, "tasks": tasks}


def _post(ls: Any, project: Any, tasks: list[dict], answers: list[dict]) -> tuple[list, dict]:
    """Post each answer with a ``result`` as a prediction of its task; (posted task ids, errors by task id).
    PostingFailed when Label Studio does not take one (what was posted stays posted)."""
    posted, errors = [], {}
    for n, (task, answer) in enumerate(zip(tasks, answers)):
        if "result" not in answer:
            errors[str(task["id"])] = answer["error"]
            continue
        try:
            scored = {"score": answer["score"]} if "score" in answer else {}  # none from a tool whose score is not sent
            ls.predictions.create(task=task["id"], result=answer["result"], model_version=answer["model_version"],
                                  **scored)
        except Exception as exc:  # Label Studio down or refusing (the SDK already retried): stop here
            left = [t["id"] for t, a in zip(tasks[n:], answers[n:]) if "result" in a]
            # the job fails (RQ retries it; `segagent jobs` shows why); what was posted stays posted and
            # is skipped by the next run, which posts the rest
            raise PostingFailed(f"Label Studio did not take the predictions of task(s) {left[:10]} of project "
                                f"{project} ({describe_failure(exc)}); {len(posted)} posted before: a retry "
                                f"of this job or the next `segagent preannotate` posts the rest") from None
        posted.append(task["id"])
    return posted, errors


class PostingFailed(RuntimeError):
    """Label Studio did not accept some predictions of a chunk (down, 5xx, refused)."""


def describe_failure(exc: Exception) -> str:
    """A short reason without headers, bodies or URLs (no credential ever reaches a job's failure)."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return type(exc).__name__
