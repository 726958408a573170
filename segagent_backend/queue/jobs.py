"""The /predict jobs a worker executes: one chunk of a request, JSON in (``PredictRequest.to_json``), one
Label Studio prediction per task out. The request was parsed by the web process; here it is only rebuilt.
Every job function takes the worker's ``context`` (``context.WorkerContext``) from the worker that runs it."""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

from ..accelerator import free_accelerator_memory, is_out_of_memory
from ..errors import RequestError
from ..labelstudio.predictions import Predictions
from ..labelstudio.request import PredictRequest
from .context import WorkerContext, require
from .names import QueueNames

log = logging.getLogger(__name__)

# Statuses of per-task errors worth another try: the image host was unreachable or overloaded.
TRANSIENT_STATUSES = frozenset({502, 503, 504})


def predict(data: dict, context: Optional[WorkerContext] = None) -> list[dict]:
    """Run one chunk through the worker's predictions: one Label Studio prediction per task, in order."""
    predictions = require(context, "predict").predictions
    request = PredictRequest.from_json(data)
    if caller_gone(request, predictions):
        # the web process already answered with a deadline error: spend no GPU time on it
        return [predictions.error("the job started after its deadline; nobody waits for it", 504)] * len(request.tasks)
    earlier = _answered_before()
    if earlier is not None:  # a click re-queued by failover whose first run finished after all
        return earlier
    try:
        if not request.interactive:  # automatic: the chunk (SEGAGENT_BATCH_CHUNK tasks) runs as one lockstep batch
            return predict_with_retries(predictions, request)
        # clicks: one task at a time, and none started once the caller has stopped waiting
        results: list[dict] = []
        for i, task in enumerate(request.tasks):
            if i and caller_gone(request, predictions):
                log.warning("job stopped after %d of %d task(s): its caller stopped waiting", i, len(request.tasks))
                late = predictions.error("the request's deadline passed before this task started", 504)
                return results + [late] * (len(request.tasks) - i)
            results += predict_with_retries(predictions, request.with_tasks([task]))
        return results
    except RequestError as exc:  # the request's own fault (e.g. a task's data): no retry helps
        return [predictions.error(exc.message, exc.status)] * len(request.tasks)


def caller_gone(request: PredictRequest, predictions: Predictions) -> bool:
    """Nobody waits for ``request`` any more: its deadline passed, or the web process that queued it gave up
    (``QueueDispatcher._give_up`` marks it in Redis, which no clock difference between machines fools)."""
    if request.deadline is not None and time.time() > request.deadline:
        return True
    from rq import get_current_job

    current = get_current_job()
    if current is None:
        return False
    try:
        return bool(current.connection.exists(QueueNames(predictions.settings.queue_prefix).gone_key(current.id)))
    except Exception:  # Redis trouble: the deadline alone decides
        return False


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


def predict_with_retries(predictions: Predictions, request: PredictRequest) -> list[dict]:
    """``predictions.predict`` with bounded, backed-off retries of transient failures.

    Tasks whose image host was unreachable (HTTP 502-type per-task errors) are tried again alone;
    a CUDA out-of-memory error frees the allocator's cache and runs the chunk again. Retries stop
    early when the next one would end after the request's deadline.
    """
    settings = predictions.settings
    results: list[Optional[dict]] = [None] * len(request.tasks)
    pending = list(range(len(request.tasks)))
    delay = settings.retry_backoff
    for attempt in range(settings.transient_retries + 1):
        last = attempt == settings.transient_retries
        try:
            answers = predictions.predict(request.with_tasks([request.tasks[i] for i in pending]))
        except Exception as exc:
            if not is_out_of_memory(exc) or last or not _time_left(request, delay):
                raise
            log.warning("CUDA out of memory on %d task(s); freeing the cache and retrying in %.1f s",
                        len(pending), delay)
            free_accelerator_memory()
        else:
            for i, answer in zip(pending, answers):
                results[i] = answer
            pending = [i for i in pending if "result" not in results[i] and results[i].get("status") in TRANSIENT_STATUSES]
            if not pending or last or not _time_left(request, delay):
                break
            log.info("retrying %d task(s) after transient errors in %.1f s", len(pending), delay)
        time.sleep(delay)
        delay *= 2
    return results


def _time_left(request: PredictRequest, delay: float) -> bool:
    return request.deadline is None or time.time() + delay < request.deadline


def noop(data: Any = None, context: Optional[WorkerContext] = None) -> Any:
    """Returns its argument: measures the queue's own overhead (bench/queue_overhead.py)."""
    return data
