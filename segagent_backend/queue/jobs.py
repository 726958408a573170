"""What a worker executes: functions RQ calls by their dotted name, with JSON arguments.

A worker process holds ONE resident ``Predictions`` over one ``ModelHost`` (installed by
``worker.run_worker``), so the models load once per worker, not once per job, and the embedding cache
stays warm between clicks.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from ..accelerator import free_accelerator_memory, is_out_of_memory
from ..errors import RequestError
from ..labelstudio.predictions import Predictions
from ..labelstudio.sessions import RedisSessions
from ..labelstudio.sources import ProjectSources
from ..media import MediaSource
from ..model_host import ModelHost
from ..settings import Settings
from ..wiring import media_loader
from .names import QueueNames, connect

log = logging.getLogger(__name__)

# Statuses of per-task errors worth another try: the image host was unreachable or overloaded.
TRANSIENT_STATUSES = frozenset({502, 503, 504})

_resident: Optional[Predictions] = None


def resident_predictions(settings: Settings) -> Predictions:
    """A worker's predictions: its own model host, media loader and (settings-given) media source; the
    click sessions in Redis, since one annotator's clicks reach whichever worker is free."""
    sessions = RedisSessions(connect(settings.redis_url, settings.redis_timeout), settings.queue_prefix) \
        if settings.redis_url else None
    return Predictions(ModelHost(settings), media_loader(settings), ProjectSources.from_settings(settings), sessions)


def install(predictions: Optional[Predictions]) -> None:
    """Make ``predictions`` the one every job of this process uses (the worker does this at start;
    None: build one from the environment on the next job)."""
    global _resident
    _resident = predictions


def resident() -> Predictions:
    """The process's predictions; built from the environment when a plain ``rq worker`` runs the job."""
    global _resident
    if _resident is None:
        _resident = resident_predictions(Settings.from_env())
    return _resident


@dataclass
class PredictJob:
    """One chunk of a /predict request: what the web process sends a worker (JSON-serialisable).

    References only, never credentials: a job lives in Redis (failed ones for a week), so the worker
    reads where the project's images are and the token to fetch them from its OWN settings
    (``ProjectSources.from_settings(settings).source_for(project)``).
    """

    tasks: list
    label_config: Any
    context: Any = None
    project: Any = None
    deadline: Optional[float] = None  # epoch seconds after which nobody waits for the answer

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "PredictJob":
        # fields this version does not know (e.g. the hostname/access_token older web processes sent)
        # are ignored: a worker never uses credentials that came through Redis
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def predict(data: dict) -> list[dict]:
    """Run one chunk through the resident predictions: one Label Studio prediction per task, in order."""
    job = PredictJob.from_json(data)
    predictions = resident()
    if caller_gone(job, predictions.settings):
        # the web process already answered with a deadline error: spend no GPU time on it
        return [predictions.error("the job started after its deadline; nobody waits for it", 504)] * len(job.tasks)
    earlier = _answered_before()
    if earlier is not None:  # a click re-queued by failover whose first run finished after all
        return earlier
    source = worker_source(predictions.settings, job.project)
    try:
        if job.context is None:  # automatic: the chunk (SEGAGENT_BATCH_CHUNK tasks) runs as one lockstep batch
            return predict_with_retries(predictions, job, source)
        # clicks: one task at a time, and none started once the caller has stopped waiting
        results: list[dict] = []
        for i, task in enumerate(job.tasks):
            if i and caller_gone(job, predictions.settings):
                log.warning("job stopped after %d of %d task(s): its caller stopped waiting", i, len(job.tasks))
                late = predictions.error("the request's deadline passed before this task started", 504)
                return results + [late] * (len(job.tasks) - i)
            results += predict_with_retries(predictions, replace(job, tasks=[task]), source)
        return results
    except RequestError as exc:  # the request's own fault (e.g. its label config): no retry helps
        return [predictions.error(exc.message, exc.status)] * len(job.tasks)


def caller_gone(job: PredictJob, settings: Settings) -> bool:
    """Nobody waits for ``job`` any more: its deadline passed, or the web process that queued it gave up
    (``QueueDispatcher._give_up`` marks it in Redis, which no clock difference between machines fools)."""
    if job.deadline is not None and time.time() > job.deadline:
        return True
    from rq import get_current_job

    current = get_current_job()
    if current is None:
        return False
    try:
        return bool(current.connection.exists(QueueNames(settings.queue_prefix).gone_key(current.id)))
    except Exception:  # Redis trouble: the deadline alone decides
        return False


def worker_source(settings: Settings, project: Any) -> MediaSource:
    """Where ``project``'s images are and the token for them: this worker's own settings decide."""
    return ProjectSources.from_settings(settings).source_for(project)


def _answered_before() -> Optional[list]:
    """The answer of an earlier run of the current RQ job, if one finished successfully (a click
    re-queued by ``dispatch`` failover runs twice when its first worker was slow, not dead)."""
    from rq import get_current_job
    from rq.results import Result

    job = get_current_job()
    if job is None:
        return None
    try:
        result = job.latest_result()
    except Exception:  # no result stream (or Redis trouble): run the job
        return None
    if result is not None and result.type == Result.Type.SUCCESSFUL and isinstance(result.return_value, list):
        return result.return_value
    return None


def predict_with_retries(predictions: Predictions, job: PredictJob, source: Optional[MediaSource]) -> list[dict]:
    """``predictions.predict`` with bounded, backed-off retries of transient failures.

    Tasks whose image host was unreachable (HTTP 502-type per-task errors) are tried again alone;
    a CUDA out-of-memory error frees the allocator's cache and runs the chunk again. Retries stop
    early when the next one would end after the job's deadline.
    """
    settings = predictions.settings
    results: list[Optional[dict]] = [None] * len(job.tasks)
    pending = list(range(len(job.tasks)))
    delay = settings.retry_backoff
    for attempt in range(settings.transient_retries + 1):
        last = attempt == settings.transient_retries
        try:
            answers = predictions.predict([job.tasks[i] for i in pending], job.label_config, job.context,
                                        job.project, source)
        except Exception as exc:
            if not is_out_of_memory(exc) or last or not _time_left(job, delay):
                raise
            log.warning("CUDA out of memory on %d task(s); freeing the cache and retrying in %.1f s",
                        len(pending), delay)
            free_accelerator_memory()
        else:
            for i, answer in zip(pending, answers):
                results[i] = answer
            pending = [i for i in pending if "result" not in results[i] and results[i].get("status") in TRANSIENT_STATUSES]
            if not pending or last or not _time_left(job, delay):
                break
            log.info("retrying %d task(s) after transient errors in %.1f s", len(pending), delay)
        time.sleep(delay)
        delay *= 2
    return results


def _time_left(job: PredictJob, delay: float) -> bool:
    return job.deadline is None or time.time() + delay < job.deadline


def noop(data: Any = None) -> Any:
    """Returns its argument: measures the queue's own overhead (bench/queue_overhead.py)."""
    return data
