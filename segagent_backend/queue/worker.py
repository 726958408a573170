"""``segagent worker``: a resident model worker (RQ ``SimpleWorker``: no fork per job).

The models load once at start and stay in memory between jobs, pinned to one device; the
embedding cache stays warm. A background thread publishes the worker's health every heartbeat and,
while a job runs, keeps the job's execution alive in RQ's started registry. That heartbeat is what
makes a killed worker's job count as *abandoned* after two missed beats (RQ's own SimpleWorker only
expires it after ``job_timeout + 60`` s), so the next worker's maintenance pass re-queues it.
Clicks cannot wait that long: the same thread also refreshes a liveness key with a TTL of
SEGAGENT_CLICK_FAILOVER seconds, and the web process waiting for a click re-queues it at the front
when its worker's key expires (``failover.py``).
"""
from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from ..errors import ModelUnavailable
from . import batch, jobs, planner, training
from .context import WorkerContext
from .names import KINDS, QueueNames
from .status import WorkerHealth

log = logging.getLogger(__name__)


def job_name(function: Callable) -> str:
    """The name RQ stores for a job of ``function`` (``Job.create``: module and qualified name)."""
    return f"{function.__module__}.{function.__qualname__}"


#: Every function a job may name, by the name RQ stores for it: the worker looks a job's function up here and
#: never imports one by name. RQ would import whatever dotted name a job in Redis carries (``os.system``
#: included), so anyone who can write to Redis could run code here; callbacks are functions too.
JOBS: Mapping[str, Callable] = MappingProxyType({job_name(f): f for f in (
    jobs.predict, jobs.noop, planner.plan_tasks, batch.run, training.train)})


class JobRefused(Exception):
    """A job naming a function outside JOBS, or a callback: failed without importing anything."""


def refusal(job: Job) -> Optional[str]:
    """Why ``job`` must not run (None: it may). Reads names only: nothing is imported."""
    if job.func_name not in JOBS:
        return f"job function {str(job.func_name)[:120]!r} is not one of segagent's jobs"
    stored = job.to_dict(include_meta=False, include_result=False)
    if any(stored.get(f"{kind}_callback_name") for kind in ("success", "failure", "stopped")):
        return "job callbacks are not run by segagent workers"
    return None


class SegagentJob(Job):
    """An RQ job as a segagent worker runs it: its function comes from JOBS, called with the worker's
    context (``worker_context``, set by ``ResidentWorker.execute_job``); a refused job raises JobRefused
    where RQ would import its function. No callback is ever imported or run."""

    worker_context: Optional[WorkerContext] = None

    @property
    def func(self) -> Callable:
        reason = refusal(self)
        if reason is not None:
            raise JobRefused(reason)
        return functools.partial(JOBS[self.func_name], context=self.worker_context)

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None


class JobTimeout(BaseException):
    """A job ran past its ``job_timeout`` (SEGAGENT_JOB_TIMEOUT).

    A BaseException, unlike RQ's JobTimeoutException: model and media code catch ``Exception`` to
    turn bad inputs into per-task errors, and must not turn a timeout into one.
    """


class JobDeathPenalty(UnixSignalDeathPenalty):
    """RQ's SIGALRM job timeout, raising ``JobTimeout``; other uses (dequeue timeouts) unchanged."""

    def __init__(self, timeout, exception=JobTimeoutException, **kwargs):
        super().__init__(timeout, JobTimeout if exception is JobTimeoutException else exception, **kwargs)


class ResidentWorker(SimpleWorker):
    """A SimpleWorker that beats while it works and publishes the health of its resident model."""

    death_penalty_class = JobDeathPenalty

    def __init__(self, queues: list[str], *, connection: redis.Redis, context: WorkerContext, names: QueueNames,
                 heartbeat: int, name: Optional[str] = None, failover: float = 0.0):
        super().__init__(
            [Queue(q, connection=connection, serializer=JSONSerializer, job_class=SegagentJob) for q in queues],
            connection=connection, serializer=JSONSerializer, name=name, job_class=SegagentJob,
            # blocking dequeue returns every `heartbeat` s, so maintenance (which re-queues abandoned
            # jobs) runs that often even on an idle worker
            worker_ttl=heartbeat + 15, maintenance_interval=heartbeat,
        )
        self.context = context
        self.host = context.host
        self.names = names
        self.heartbeat_seconds = heartbeat
        self.failover_seconds = failover  # TTL of the liveness key clicks fail over on (0: none)
        self.jobs_done = 0
        self.stop_requested = False  # SIGTERM/SIGINT: RQ's warm shutdown ends the loop
        self._current: Optional[tuple[Job, object]] = None
        self._stop_beating = threading.Event()
        self._beater: Optional[threading.Thread] = None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Two heartbeats: a running job whose worker missed both is abandoned (and retried)."""
        return 2 * self.heartbeat_seconds

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Hot reload between jobs: a newly promoted model version loads before this job runs (never
        # under a running job); a version that fails to load leaves the old one serving.
        self.host.maybe_reload()
        execution = self.prepare_execution(job)
        self._current = (job, execution)
        try:
            reason = refusal(job)
            if reason is not None:  # SegagentJob.func raises JobRefused: RQ fails the job, nothing imported
                log.error("job %s refused: %s", job.id, reason)
                job.retries_left = None  # refused again on every retry: failed once, for good
            job.worker_context = self.context
            self.perform_job(job, queue, execution)
        finally:
            self._current = None
            self.jobs_done += 1
        self.set_state(WorkerStatus.IDLE)

    def handle_warm_shutdown_request(self) -> None:
        """RQ's hook on SIGTERM/SIGINT: ``run_worker`` returns instead of starting a fresh RQ worker."""
        self.stop_requested = True
        super().handle_warm_shutdown_request()

    # ----- health ------------------------------------------------------------------------------
    def health(self) -> WorkerHealth:
        p = self.host
        current = self._current
        return WorkerHealth(
            name=self.name, host=socket.gethostname(), pid=os.getpid(), queues=",".join(self.queue_names()),
            device=describe_device(p.settings.device), model_version=p.model_version, model=p.status,
            cache_entries=len(p.cache), cache_bytes=p.cache.nbytes, jobs_done=self.jobs_done,
            current_job=current[0].id if current else "", heartbeat_at=time.time(),
            reload_error=p.reload_error or "",
        )

    def publish_health(self) -> None:
        key = self.names.health_key(self.name)
        with self.connection.pipeline() as pipe:
            pipe.hset(key, mapping=self.health().to_redis())
            pipe.expire(key, 3 * self.heartbeat_seconds)
            pipe.sadd(self.names.workers_key, self.name)
            pipe.execute()

    def publish_liveness(self) -> None:
        """The short-TTL key a web process waiting for a click checks (``failover.py``); the ``known``
        key says this worker keeps one, so its absence means death, not an older worker."""
        if not self.failover_seconds:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(self.names.alive_key(self.name), "1", px=max(1, int(self.failover_seconds * 1000)))
            pipe.set(self.names.known_key(self.name), "1", ex=max(60, 3 * self.heartbeat_seconds))
            pipe.execute()

    def start_beating(self) -> None:
        try:  # alive, and listed by /health, before the first job can be dequeued (not a half heartbeat later)
            self.publish_liveness()
            self.publish_health()
        except redis.RedisError as exc:
            log.warning("liveness beat failed: %s", exc)
        self._beater = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._beater.start()

    def stop_beating(self) -> None:
        self._stop_beating.set()
        if self._beater is not None:
            self._beater.join(timeout=5)
        try:
            self.connection.delete(self.names.health_key(self.name), self.names.alive_key(self.name),
                                   self.names.known_key(self.name))
            self.connection.srem(self.names.workers_key, self.name)
        except redis.RedisError:
            pass

    def _beat(self) -> None:
        """Every half heartbeat: RQ's leases and the health hash; every third of SEGAGENT_CLICK_FAILOVER:
        the liveness key (a cheap SET, so a click's dead worker is noticed within that TTL)."""
        interval = self.heartbeat_seconds / 2
        tick = min(interval, self.failover_seconds / 3) if self.failover_seconds else interval
        next_health = time.monotonic() + interval
        while not self._stop_beating.wait(tick):
            try:
                self.publish_liveness()
                if time.monotonic() < next_health - 0.01:
                    continue
                next_health = time.monotonic() + interval
                current = self._current
                if current is not None:
                    self.maintain_heartbeats(*current)  # RQ's own: execution, job and worker TTLs
                self.publish_health()
            except redis.RedisError as exc:  # Redis restarting: keep beating, the loop reconnects
                log.warning("heartbeat failed: %s", exc)
            except Exception:
                log.exception("heartbeat failed")


def describe_device(device: str) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"{device} (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else device


def run_worker(context: WorkerContext, kinds: tuple[str, ...] = KINDS, name: Optional[str] = None,
               burst: bool = False) -> int:
    """Load the context's models, then serve the queues (priority order) until SIGTERM/SIGINT, every job
    run with ``context`` (``assembly.worker_context``: the same assembly as the web app's).

    When Redis goes away RQ's loop ends; the same resident models then serve a fresh RQ worker as
    soon as Redis answers again, so a Redis restart costs no model reload.
    """
    settings = context.settings
    try:
        context.host.load()
    except ModelUnavailable:
        log.error("the models failed to load: %s", context.host.status)
        return 1
    names = QueueNames(settings.queue_prefix)
    base = name or f"segagent-{socket.gethostname()}-{os.getpid()}"
    log.info("worker %s ready: %s on %s, queues %s", base, context.model_version,
             describe_device(settings.device), ", ".join(names.queues(kinds)))
    wait = 1.0
    while True:
        connection = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout)
        worker = ResidentWorker(names.queues(kinds), connection=connection, context=context, names=names,
                                heartbeat=settings.worker_heartbeat, name=f"{base}-{uuid.uuid4().hex[:6]}",
                                failover=settings.click_failover)
        worker.start_beating()
        try:
            worker.work(burst=burst, logging_level=settings.log_level.upper())
        except redis.RedisError as exc:
            log.warning("Redis is unreachable (%s): retrying in %.0f s", exc, wait)
        finally:
            worker.stop_beating()
        if burst or worker.stop_requested:
            return 0
        time.sleep(wait)
        wait = min(wait * 2, 30.0)
