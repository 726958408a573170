"""Where a /predict runs: in this process (no Redis) or on the workers behind RQ queues.

Both dispatchers answer ``predict(request) -> list[dict]`` for a ``PredictRequest`` parsed where it
arrived (``labelstudio.request.parse_predict``): one Label Studio prediction per task, in order; a task
that could not be predicted gets a per-task error (no ``result`` key).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from ..errors import QueueUnavailable
from ..labelstudio.predictions import Predictions, task_error
from ..labelstudio.request import PredictRequest
from ..settings import Settings
from ..versions import VersionName
from . import status
from .failover import ClickFailover
from . import jobs
from .names import BATCH, INTERACTIVE, QueueNames, connect
from .submit import open_queue, submit

log = logging.getLogger(__name__)

RESULT_GRACE = 60  # a result outlives the request's deadline by this much, then Redis drops it
HEALTH_TIMEOUT = 0.3  # seconds per Redis call of /health (two calls at most)
HEALTH_CACHE = 0.5  # seconds a /health answer is shared between requests


class InlineDispatcher:
    """Embedded mode: this process's one model host runs every job (model calls serialised)."""

    mode = "embedded"

    def __init__(self, predictions: Predictions):
        self.predictions = predictions

    def predict(self, request: PredictRequest) -> list[dict]:
        """The queue's deadlines here too: clicks one task at a time, automatic predictions in chunks of
        SEGAGENT_BATCH_CHUNK, and nothing started after SEGAGENT_INTERACTIVE_DEADLINE /
        SEGAGENT_PREDICT_DEADLINE (Label Studio has stopped waiting): those tasks get a 504 each."""
        s = self.predictions.settings
        seconds = s.interactive_deadline if request.interactive else s.predict_deadline
        deadline = time.monotonic() + seconds
        size = 1 if request.interactive else s.batch_chunk
        tasks, results = request.tasks, []
        for start in range(0, len(tasks), size):
            if start and time.monotonic() > deadline:
                var = "SEGAGENT_INTERACTIVE_DEADLINE" if request.interactive else "SEGAGENT_PREDICT_DEADLINE"
                log.warning("request stopped after %d of %d task(s): past %s=%s s", start, len(tasks), var, seconds)
                late = self.predictions.error(f"no answer within {var}={seconds} s: the deadline passed "
                                              f"before this task started", 504)
                return results + [late] * (len(tasks) - start)
            results += self.predictions.predict(request.with_tasks(tasks[start:start + size]))
        return results

    def health(self) -> tuple[bool, dict]:
        return True, {}


class QueueDispatcher:
    """Queue mode: jobs go to RQ; this process loads no model and waits with a deadline.

    Jobs carry no credentials: workers read where a project's images are, and the token, from their own
    settings. ``version``: the version name the per-task errors carry; ``on_job_done(queue, seconds)`` is
    told the enqueue-to-result time of every finished job.
    """

    mode = "queue"

    def __init__(self, settings: Settings, version: VersionName,
                 on_job_done: Optional[Callable[[str, float], None]] = None):
        self.settings = settings
        self.version = version
        self.names = QueueNames(settings.queue_prefix)
        self.connection = connect(settings.redis_url, settings.redis_timeout)
        # /health's own client: short timeouts, no retry, so it answers within Label Studio's 1 s
        self._health_connection = connect(settings.redis_url, min(settings.redis_timeout, HEALTH_TIMEOUT), retries=0)
        self._health: Optional[tuple[float, tuple[bool, dict]]] = None  # (valid until, answer)
        self._health_lock = threading.Lock()
        self.on_job_done = on_job_done or (lambda queue, seconds: None)

    def queue(self, kind: str) -> Queue:
        return open_queue(self.settings, kind, self.connection)

    # ----- /predict ----------------------------------------------------------------------------
    def predict(self, request: PredictRequest) -> list[dict]:
        """Fan the tasks out as jobs, wait for them until the deadline, answer in task order."""
        s = self.settings
        kind = INTERACTIVE if request.interactive else BATCH
        # clicks too fan out in chunks (one click context for all of them): a request of many tasks is
        # several jobs, each of which stops starting tasks once this process has stopped waiting
        size = s.batch_chunk
        seconds = s.interactive_deadline if request.interactive else s.predict_deadline
        deadline = time.monotonic() + seconds
        chunks = [list(range(i, min(i + size, len(request.tasks)))) for i in range(0, len(request.tasks), size)]
        queue = self.queue(kind)
        # a click whose worker dies runs again on another one within SEGAGENT_CLICK_FAILOVER seconds;
        # batch jobs keep RQ's lease (SEGAGENT_WORKER_HEARTBEAT)
        failover = ClickFailover(self.connection, self.names, queue) if request.interactive else None
        try:
            enqueued = time.monotonic()
            # the parsed request, chunk by chunk (references only: no credential is ever stored in Redis)
            queued = [self._enqueue(queue, request.with_tasks([request.tasks[i] for i in chunk], time.time() + seconds),
                                    seconds) for chunk in chunks]
            finished = self._wait([job.id for job in queued], deadline, queue.name, enqueued, failover)
        except redis.RedisError as exc:
            raise QueueUnavailable(exc) from None
        results: list[dict] = []
        for chunk, job in zip(chunks, queued):
            results += self._answers(job, finished.get(job.id), len(chunk), kind, seconds)
        return results

    def _enqueue(self, queue: Queue, payload: PredictRequest, seconds: float) -> Job:
        return submit(
            queue, jobs.predict, payload.to_json(), self.settings,
            result_ttl=int(seconds) + RESULT_GRACE,
            ttl=int(seconds) + 1,  # a job nobody picked up before the deadline is dropped, not run late
            description=f"predict {len(payload.tasks)} task(s) of project {payload.project}",
        )

    def _wait(self, job_ids: list[str], deadline: float, queue: str, enqueued: float,
              failover: Optional[ClickFailover] = None) -> dict[str, Result]:
        """Final results (successful or failed) by job id, read from RQ's result streams.

        One blocking XREAD covers every pending job, so a click's answer arrives the moment the
        worker writes it. A RETRIED entry (worker died, job re-queued) is not final: keep waiting.
        With ``failover`` (clicks), every quarter of SEGAGENT_CLICK_FAILOVER the pending jobs' workers
        are checked and a job whose worker died is re-queued at the front (``failover.py``); the first
        final result on the job's stream is the answer, whichever run wrote it.
        """
        last = {job_id: "0-0" for job_id in job_ids}
        finished: dict[str, Result] = {}
        block = max(0.05, min(1.0, self.settings.redis_timeout / 2))  # below the socket timeout
        poll = max(0.05, self.settings.click_failover / 4)
        if failover is not None:
            block = min(block, poll)
        next_check = time.monotonic() + poll
        while len(finished) < len(job_ids):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if failover is not None and time.monotonic() >= next_check:
                try:
                    failover.check([j for j in job_ids if j not in finished])
                except redis.RedisError:
                    raise
                except Exception:  # failover is a help, never the reason a click fails
                    log.exception("click failover check failed")
                next_check = time.monotonic() + poll
            streams = {Result.get_key(j): last[j] for j in job_ids if j not in finished}
            reply = self.connection.xread(streams, block=max(1, int(min(left, block) * 1000)))
            for key, entries in reply or []:
                job_id = key.decode().rsplit(":", 1)[1]
                for entry_id, payload in entries:
                    last[job_id] = entry_id.decode()
                    result = Result.restore(job_id, last[job_id], payload, connection=self.connection,
                                            serializer=JSONSerializer)
                    if job_id not in finished and result.type in (Result.Type.SUCCESSFUL, Result.Type.FAILED,
                                                                  Result.Type.STOPPED):
                        finished[job_id] = result
                        self.on_job_done(queue, time.monotonic() - enqueued)
        return finished

    def _answers(self, job: Job, result: Optional[Result], count: int, kind: str, seconds: float) -> list[dict]:
        def error(message: str, code: int) -> dict:
            return task_error(message, code, self.version.model_version)

        if result is None:
            state = self._give_up(job)
            deadline_var = "SEGAGENT_INTERACTIVE_DEADLINE" if kind == INTERACTIVE else "SEGAGENT_PREDICT_DEADLINE"
            return [error(f"no answer within {deadline_var}={seconds} s (job {job.id} was {state}); "
                          f"is a `segagent worker` running on the {self.names.queue(kind)} queue?", 504)] * count
        if result.type == Result.Type.SUCCESSFUL:
            value = result.return_value
            if isinstance(value, list) and len(value) == count:
                return value
            return [error(f"job {job.id} answered {type(value).__name__} instead of {count} predictions", 500)] * count
        reason = (result.exc_string or "stopped").strip().splitlines()[-1]
        return [error(f"job {job.id} failed on the worker: {reason}", 500)] * count

    def _give_up(self, job: Job) -> str:
        """Cancel a job still waiting in the queue (nobody will read it), tell a running one to start no
        further task (``jobs.caller_gone``); report where it was."""
        try:
            self.connection.set(self.names.gone_key(job.id), "1", ex=RESULT_GRACE)
            state = job.get_status(refresh=True)
            if state in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED):
                job.cancel()
            return state.value if state is not None else "gone"
        except Exception as exc:  # already gone or Redis trouble: the answer is an error either way
            return f"unknown ({type(exc).__name__})"

    # ----- /health -----------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        """(usable, fields for /health): Redis reachable, the live workers and their models.

        Bounded for Label Studio's 1 s: its own client (HEALTH_TIMEOUT per call, no retries), two round
        trips, and the answer is shared for HEALTH_CACHE seconds (a failure for half of that);
        while one request refreshes it, concurrent ones get the last answer instead of waiting.
        """
        cached = self._health
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        got = (self._health_lock.acquire(blocking=False) if cached is not None
               else self._health_lock.acquire(timeout=2 * HEALTH_TIMEOUT + 0.1))
        if not got:
            if cached is not None:
                return cached[1]
            return False, {"redis": "unreachable: no answer in time", "workers": []}
        try:
            cached = self._health
            if cached is not None and time.monotonic() < cached[0]:
                return cached[1]
            answer = self._read_health()
            self._health = (time.monotonic() + (HEALTH_CACHE if answer[0] else HEALTH_CACHE / 2), answer)
            return answer
        finally:
            self._health_lock.release()

    def _read_health(self) -> tuple[bool, dict]:
        try:
            workers = status.workers(self._health_connection, self.names)
        except redis.RedisError as exc:
            return False, {"redis": f"unreachable: {type(exc).__name__}: {exc}", "workers": []}
        return True, {"redis": "ok", "workers": [
            {"name": w.name, "host": w.host, "device": w.device, "model_version": w.model_version,
             "model": w.model, "queues": w.queues, "cache_entries": w.cache_entries, "cache_bytes": w.cache_bytes,
             "jobs_done": w.jobs_done, "seconds_since_heartbeat": round(time.time() - w.heartbeat_at, 1),
             **({"reload_error": w.reload_error} if w.reload_error else {})}
            for w in workers]}

    def snapshot(self) -> status.Snapshot:
        return status.snapshot(self.connection, self.names)
