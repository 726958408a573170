"""Batch pre-annotation of a Label Studio project, planned: ``segagent preannotate`` (and ``refine``) list the
project's tasks, keep those without a prediction of the current model version (all of them with ``force``),
queue them in chunks on the batch queue as ``batch.run`` jobs and follow them with a progress bar.

No HTTP request waits for a whole project: a webhook's TASKS_CREATED queues ONE small ``plan`` job
(``planning_starter``), and a worker does the listing. ``segagent refine`` is the same with a start mask:
each task's latest brush mask (of its predictions, optionally of one model version, or of its submitted
annotations) is where the policy's episode starts, and the refined mask is posted as a prediction of model
version ``refine-<version>`` (``batch.refined_version``), which is also what makes a second run skip the task.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from ..errors import QueueUnavailable, RequestError
from ..labelstudio.client import label_studio
from ..settings import Settings
from ..versions import VersionName
from . import batch
from .batch import FAILED, FIRST_REASONS, REFINE_FROM, SKIPPED, WRITTEN, BatchJob, outcome, refined_version
from .context import WorkerContext, require
from .names import BATCH, connect
from .submit import open_queue, submit

if TYPE_CHECKING:
    from ..webhook import QueuePreannotation

log = logging.getLogger(__name__)

RESULT_TTL = 24 * 3600  # the per-chunk summaries stay readable for a day


@dataclass
class Plan:
    """What ``enqueue`` did: the tasks it found, those it queued, the jobs it created."""

    project: int
    model_version: str
    tasks: int = 0
    queued: list[int] = field(default_factory=list)
    already_predicted: int = 0
    jobs: list[str] = field(default_factory=list)
    job_tasks: list[int] = field(default_factory=list)  # how many tasks each job holds

    def to_json(self) -> dict:
        return asdict(self)


def enqueue(settings: Settings, project: int, task_ids: Optional[Iterable[int]] = None, force: bool = False,
            model_version: Optional[str] = None, refine: Optional[dict] = None) -> Plan:
    """Queue every task of ``project`` (or of ``task_ids``) that lacks a prediction of ``model_version``.

    ``refine`` (``{"from": "predictions"|"annotations", "source_version": V or None}``): queue refinement
    jobs instead, for tasks lacking a prediction of ``refined_version(model_version)``."""
    version = model_version or VersionName(settings).model_version
    if refine is not None and refine.get("from") not in REFINE_FROM:
        raise RequestError(f"refine from {refine.get('from')!r}: use one of {', '.join(REFINE_FROM)}")
    posted_version = version if refine is None else refined_version(version)
    ls = label_studio(settings)
    wanted = set(task_ids) if task_ids is not None else None
    plan = Plan(project, posted_version)
    seen = set()
    # only ids and the versions already predicted: a project's predictions (masks) are never downloaded here
    for task in ls.tasks.list(project=project, include="id,predictions_model_versions", page_size=1000):
        if wanted is not None and task.id not in wanted:
            continue
        plan.tasks += 1
        seen.add(task.id)
        versions = set(filter(None, (task.predictions_model_versions or "").split(",")))
        if posted_version in versions and not force:
            plan.already_predicted += 1
        else:
            plan.queued.append(task.id)
    if wanted is not None and wanted - seen:
        raise RequestError(f"task(s) {sorted(wanted - seen)[:10]} are not in project {project}")
    queue = open_queue(settings, BATCH)
    size = settings.batch_chunk
    what, refining = ("preannotate", {}) if refine is None else ("refine", refine)
    for start in range(0, len(plan.queued), size):
        chunk = plan.queued[start:start + size]
        work = BatchJob(project, chunk, version, force, refining.get("from"), refining.get("source_version"))
        job = submit(queue, batch.run, work.to_json(), settings, result_ttl=RESULT_TTL,
                     description=f"{what} {len(chunk)} task(s) of project {project}")
        plan.jobs.append(job.id)
        plan.job_tasks.append(len(chunk))
    return plan


@dataclass
class Progress:
    """Tasks, not jobs: what the finished jobs say happened to each of their tasks."""

    tasks_written: int = 0
    tasks_skipped: int = 0
    tasks_failed: int = 0
    jobs_left: int = 0
    failures: list = field(default_factory=list)  # the first FIRST_REASONS failed tasks: {"task", "reason"}
    skips: list = field(default_factory=list)  # the first FIRST_REASONS skipped tasks: {"task", "reason"}

    @property
    def tasks_done(self) -> int:
        """Tasks that ended well: written, or skipped because they already held what the job writes."""
        return self.tasks_written + self.tasks_skipped

    def add(self, item: dict) -> None:
        status = item.get("outcome")
        if status == WRITTEN:
            self.tasks_written += 1
            return
        which = self.skips if status == SKIPPED else self.failures
        if status == SKIPPED:
            self.tasks_skipped += 1
        else:
            self.tasks_failed += 1
        if len(which) < FIRST_REASONS:
            which.append({"task": item.get("task"), "reason": item.get("reason") or "no reason given"})


def task_outcomes(result: Any, task_ids: list) -> list[dict]:
    """A finished job's result -> one outcome per task. ``tasks`` when the job lists them; else the
    older ``posted``/``skipped``/``errors`` summary; a result saying nothing per task (a job of
    another kind) counts its tasks as written."""
    if isinstance(result, dict) and isinstance(result.get("tasks"), list):
        return result["tasks"]
    if isinstance(result, dict) and {"posted", "skipped", "errors"} <= result.keys():
        return ([outcome(t, WRITTEN) for t in result["posted"] or []]
                + [outcome(t, SKIPPED, "already predicted") for t in result["skipped"] or []]
                + [outcome(t, FAILED, str(r)) for t, r in (result["errors"] or {}).items()])
    return [outcome(t, WRITTEN) for t in task_ids]


def job_failure(job: Any, status: Any) -> str:
    """Why a job ended without a result, in one line (its exception's last line)."""
    if job is None:
        return "the job's record expired from Redis before it finished"
    if status != "failed":
        return f"the job was {getattr(status, 'value', status)}"
    try:
        result = job.latest_result()
        text = (result.exc_string if result is not None else None) or ""
    except Exception:  # no result stream (or Redis trouble)
        text = ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return f"the job failed: {lines[-1]}" if lines else "the job failed (no reason recorded: see `segagent jobs`)"


def progress(settings: Settings, plan: Plan) -> Progress:
    """How far the plan's jobs are, in tasks: what each finished job says happened to each of its tasks
    (every task of a failed or vanished job failed, with the job's reason), and the jobs still queued
    or running."""
    from rq.job import Job, JobStatus

    connection = connect(settings.redis_url, settings.redis_timeout)
    fetched = Job.fetch_many(plan.jobs, connection=connection, serializer=JSONSerializer)
    state = Progress()
    start = 0
    for job, tasks in zip(fetched, plan.job_tasks):
        ids, start = plan.queued[start:start + tasks] or [None] * tasks, start + tasks
        status = job.get_status() if job is not None else JobStatus.FAILED  # expired: it cannot finish now
        if status == JobStatus.FINISHED:
            for item in task_outcomes(job.return_value(), ids):
                state.add(item)
        elif status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            reason = job_failure(job, status)
            for task_id in ids:
                state.add(outcome(task_id, FAILED, reason))
        else:
            state.jobs_left += 1
    return state


def follow(settings: Settings, plan: Plan, interval: float = 0.5) -> Progress:
    """A progress bar over the plan's tasks until every job finished or failed. Interrupting it stops
    nothing: the jobs stay queued, and running the command again skips the tasks already predicted."""
    import time

    from tqdm import tqdm

    with tqdm(total=len(plan.queued), unit="task", desc=f"project {plan.project}") as bar:
        while True:
            state = progress(settings, plan)
            bar.n = state.tasks_done + state.tasks_failed
            bar.set_postfix(written=state.tasks_written, skipped=state.tasks_skipped, failed=state.tasks_failed,
                            refresh=False)
            bar.refresh()
            if not state.jobs_left:
                return state
            time.sleep(interval)


def enqueue_planning(queue: Queue, project: int, task_ids: list[int], settings: Settings) -> str:
    """Queue ONE small job that plans pre-annotation of ``task_ids`` on a worker; returns its id.

    The web process answers a webhook within Label Studio's 1 s: listing tasks through Label Studio's
    API (what ``enqueue`` does) happens on the worker instead.
    """
    job = submit(queue, plan_tasks, {"project": project, "task_ids": task_ids},
                 settings, result_ttl=RESULT_TTL,
                 description=f"plan pre-annotation of {len(task_ids)} new task(s) of project {project}")
    return job.id


def planning_starter(settings: Settings, queue: Callable[[], Queue]) -> "QueuePreannotation":
    """The webhook's TASKS_CREATED action: one planning job on the batch queue (QueueUnavailable when
    Redis does not answer)."""
    def start(project: int, task_ids: list[int]) -> dict:
        q = queue()
        try:
            return {"queue": q.name, "job": enqueue_planning(q, project, task_ids, settings)}
        except redis.RedisError as exc:
            raise QueueUnavailable(exc) from None

    return start


def plan_tasks(data: dict, context: Optional[WorkerContext] = None) -> dict:
    """The worker's side of ``enqueue_planning``: the planner for exactly those tasks.

    Idempotent: tasks already holding a prediction of this worker's model version are skipped, so a
    webhook delivered twice queues nothing twice.
    """
    context = require(context, "plan_tasks")
    return enqueue(context.settings, data["project"], data["task_ids"], model_version=context.model_version).to_json()
