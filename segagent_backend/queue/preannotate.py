"""Batch pre-annotation of a Label Studio project: ``segagent preannotate`` enqueues, workers post.

No HTTP request waits for a whole project: the command lists the project's tasks, keeps those without
a prediction of the current model version (all of them with ``force``), and enqueues them in chunks on
the batch queue. A worker fetches each task fresh, checks again that it still lacks that version
(so running the command twice, or a job retried after its worker died, posts nothing twice), predicts
the chunk in lockstep and posts the predictions through Label Studio's API.

``segagent refine`` is the same with a start mask: each task's latest brush mask (of its predictions,
optionally of one model version, or of its submitted annotations) is where the policy's episode starts,
and the refined mask is posted as a prediction of model version ``refine-<version>``
(``refined_version``), which is also what makes a second run skip the task.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import numpy as np
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from ..errors import QueueUnavailable, RequestError
from ..labelstudio.annotations import BRUSH, AnnotationError, check_rle, decode_brush
from ..labelstudio.client import label_studio
from ..settings import Settings
from ..versions import VersionName
from . import jobs
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


#: the model version of a refined prediction: ``refine-<version of the model that refined it>``
REFINED_PREFIX = "refine-"
SOURCES = ("predictions", "annotations")


def refined_version(version: str) -> str:
    return REFINED_PREFIX + version


def enqueue(settings: Settings, project: int, task_ids: Optional[Iterable[int]] = None, force: bool = False,
            model_version: Optional[str] = None, refine: Optional[dict] = None) -> Plan:
    """Queue every task of ``project`` (or of ``task_ids``) that lacks a prediction of ``model_version``.

    ``refine`` (``{"from": "predictions"|"annotations", "source_version": V or None}``): queue refinement
    jobs instead, for tasks lacking a prediction of ``refined_version(model_version)``."""
    version = model_version or VersionName(settings).model_version
    if refine is not None and refine.get("from") not in SOURCES:
        raise RequestError(f"refine from {refine.get('from')!r}: use one of {', '.join(SOURCES)}")
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
    function, what = ("run", "preannotate") if refine is None else ("run_refine", "refine")
    for start in range(0, len(plan.queued), size):
        chunk = plan.queued[start:start + size]
        data = {"project": project, "task_ids": chunk, "model_version": version, "force": force}
        if refine is not None:
            data |= {"from": refine["from"], "source_version": refine.get("source_version")}
        job = submit(queue, f"segagent_backend.queue.preannotate.{function}", data, settings, result_ttl=RESULT_TTL,
                     description=f"{what} {len(chunk)} task(s) of project {project}")
        plan.jobs.append(job.id)
        plan.job_tasks.append(len(chunk))
    return plan


#: what happened to one task of a batch job (``run``/``run_refine`` return one per task, in ``tasks``)
WRITTEN, SKIPPED, FAILED = "written", "skipped", "failed"
FIRST_REASONS = 5  # how many failed (and skipped) tasks a summary names with their reasons


def outcome(task_id: Any, status: str, reason: str = "") -> dict:
    return {"task": task_id, "outcome": status, "reason": reason}


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
    job = submit(queue, "segagent_backend.queue.preannotate.plan", {"project": project, "task_ids": task_ids},
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


def plan(data: dict) -> dict:
    """The worker's side of ``enqueue_planning``: the planner for exactly those tasks.

    Idempotent: tasks already holding a prediction of this worker's model version are skipped, so a
    webhook delivered twice queues nothing twice.
    """
    resident = jobs.resident()
    return enqueue(resident.settings, data["project"], data["task_ids"],
                   model_version=resident.model_version).to_json()


def run(data: dict) -> dict:
    """The worker's side: predict one chunk and post the predictions; a summary is the job's result."""
    predictions = jobs.resident()
    if predictions.model_version != data["model_version"]:
        # another model answers here than the one the command planned for: posting would mislabel
        raise RuntimeError(f"this worker serves {predictions.model_version}, the job wants {data['model_version']}")
    ls = label_studio(predictions.settings)
    project = ls.projects.get(id=data["project"])
    tasks: list[dict[str, Any]] = []
    skipped = []
    for task_id in data["task_ids"]:
        task = ls.tasks.get(id=str(task_id))
        versions = {p.model_version for p in task.predictions or []}
        if data["model_version"] in versions and not data["force"]:
            skipped.append(task_id)  # posted by an earlier run of this job or of the command
        else:
            tasks.append({"id": task.id, "data": task.data})
    job = jobs.PredictJob(tasks, project.label_config, None, data["project"])
    answers = jobs.predict_with_retries(predictions, job, None) if tasks else []
    posted, errors = _post(ls, data, tasks, answers)
    return _summary(data, posted, skipped, errors, f"already holds a prediction of {data['model_version']}")


def run_refine(data: dict) -> dict:
    """The worker's side of ``segagent refine``: each task's source brush mask refined by the policy, posted
    as a prediction of ``refined_version``; tasks without a source mask are reported under ``errors``."""
    predictions = jobs.resident()
    if predictions.model_version != data["model_version"]:
        raise RuntimeError(f"this worker serves {predictions.model_version}, the job wants {data['model_version']}")
    version = refined_version(data["model_version"])
    ls = label_studio(predictions.settings)
    project = ls.projects.get(id=data["project"])
    tasks, masks, skipped, errors = [], [], [], {}
    for task_id in data["task_ids"]:
        task = ls.tasks.get(id=str(task_id))
        if version in {p.model_version for p in task.predictions or []} and not data["force"]:
            skipped.append(task_id)
            continue
        try:
            mask = source_mask(task, data["from"], data.get("source_version"))
        except AnnotationError as exc:
            errors[str(task_id)] = str(exc)
            continue
        tasks.append({"id": task.id, "data": task.data})
        masks.append(mask)
    answers = predictions.refine(tasks, project.label_config, masks, data["project"]) if tasks else []
    answers = [dict(a, model_version=version) if "result" in a else a for a in answers]
    posted, failed = _post(ls, data, tasks, answers)
    return _summary(data, posted, skipped, errors | failed, f"already holds a prediction of {version}")


def _summary(data: dict, posted: list, skipped: list, errors: dict, skip_reason: str) -> dict:
    """A batch job's result: the task ids posted and skipped, the errors by task id, and ``tasks``: one
    outcome per task of the job, in the job's order (what ``segagent preannotate``/``refine`` count)."""
    done = {**{t: outcome(t, WRITTEN) for t in posted}, **{t: outcome(t, SKIPPED, skip_reason) for t in skipped},
            **{int(t): outcome(int(t), FAILED, str(r)) for t, r in errors.items()}}
    tasks = [done.get(t) or outcome(t, FAILED, "no answer for this task") for t in data["task_ids"]]
    if errors:
        log.warning("project %s: %d of %d task(s) not written: %s", data["project"], len(errors),
                    len(data["task_ids"]), "; ".join(f"task {t}: {r}" for t, r in list(errors.items())[:FIRST_REASONS]))
    return {"posted": posted, "skipped": skipped, "errors": errors, "tasks": tasks}


def source_mask(task: Any, source: str, model_version: Optional[str] = None) -> np.ndarray:
    """The brush mask of ``task`` to refine: the union of the brush regions of its latest prediction
    (of ``model_version`` when given; never a refined one) or of its latest submitted annotation, at the
    size Label Studio drew it. AnnotationError when there is none or it does not decode."""
    if source == "predictions":
        records = [{"result": p.result, "model_version": p.model_version} for p in task.predictions or []]
        records = [r for r in records if (r["model_version"] == model_version if model_version
                                          else not str(r["model_version"] or "").startswith(REFINED_PREFIX))]
    else:
        records = [a for a in task.annotations or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    for record in reversed(records):  # the latest first
        regions = [r for r in record.get("result") or [] if isinstance(r, dict) and r.get("type") == BRUSH]
        if regions:
            return _union(regions)
    which = f"{source} of model version {model_version!r}" if model_version and source == "predictions" else source
    raise AnnotationError(f"no brush mask in the task's {which}")


def _union(regions: list[dict]) -> np.ndarray:
    """Brush regions of one record -> (H, W) bool, every RLE header checked before anything is decoded."""
    sizes = {(r.get("original_width"), r.get("original_height")) for r in regions}
    if len(sizes) != 1 or not all(isinstance(v, int) and v > 0 for v in next(iter(sizes))):
        raise AnnotationError("the brush regions do not share one positive original_width x original_height")
    width, height = sizes.pop()
    rles = [(r.get("value") or {}).get("rle") for r in regions]
    for rle in rles:
        check_rle(rle, width, height)
    out = np.zeros((height, width), dtype=bool)
    for rle in rles:
        out |= decode_brush(rle, width, height)
    return out


def _post(ls: Any, data: dict, tasks: list[dict], answers: list[dict]) -> tuple[list, dict]:
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
                                f"{data['project']} ({describe_failure(exc)}); {len(posted)} posted before: a retry "
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
