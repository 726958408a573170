"""Where a training round runs: a job on the train queue (with REDIS_URL) or a thread of this process.

The webhook only asks for a round; it never waits for one. One round per process at a time in
embedded mode (a request arriving meanwhile is answered "already running": the corrections it
brought are in the store and join the next round). On the queue, one queued or running round per
project: its job id is kept in Redis (``QueueNames.train_key``, SET NX), so twenty Start Training
clicks, from any number of web processes, queue one job. A round killed with its worker is retried
with the same run id and resumes from its checkpoints.
"""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import asdict
from typing import Callable, Optional

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from ..errors import QueueUnavailable
from ..learning import StartTraining, new_run_id, run_training
from ..settings import Settings
from .context import WorkerContext, require
from .names import TRAIN, QueueNames
from .submit import open_queue, submit

log = logging.getLogger(__name__)

RESULT_TTL = 7 * 24 * 3600  # a round's report stays readable for a week
# a round's job that ended (or expired: gone) frees its project's train key; in any other state it holds it,
# "created" included: rq saves a job before it queues it, and a round seen in that moment is not a free one
ENDED_STATES = frozenset({"finished", "failed", "stopped", "canceled"})
_CLAIM_TRIES = 3
# A claim lives this long until its job is queued (then RESULT_TTL): a key naming no job yet is a round
# being queued right now, not a free one; if its web process died before queueing, it frees itself.
CLAIM_TTL = 30


def train(data: dict, context: Optional[WorkerContext] = None) -> dict:
    """The worker's side: one round with this worker's settings; the report is the job's result."""
    context = require(context, "train")
    report = run_training(context.settings, data.get("project"), data.get("source", "corrections"), data["run"])
    context.host.maybe_reload()  # a promoted version serves this worker's next job
    return asdict(report)


def queued_starter(settings: Settings, queue: Optional[Callable[[], Queue]] = None) -> StartTraining:
    """Start rounds as jobs on the train queue."""
    key_of = QueueNames(settings.queue_prefix).train_key

    def start(project: Optional[int], data_from: str) -> dict:
        q = queue() if queue is not None else open_queue(settings, TRAIN)
        run, job_id = new_run_id(), uuid.uuid4().hex
        try:
            holder = _claim(q.connection, key_of(project), job_id)
            if holder is not None:
                return {"started": False, "queue": q.name, "job": holder, "note": (
                    f"a training round of project {project} is already queued or running (job {holder}); "
                    "corrections recorded meanwhile join a later one")}
            try:
                job = submit(q, train,
                             {"project": project, "source": data_from, "run": run}, settings,
                             job_timeout=settings.train_timeout, result_ttl=RESULT_TTL,
                             description=f"train project {project} ({data_from})", job_id=job_id)
            except BaseException:
                _release(q.connection, key_of(project), job_id)  # no job: the next request may queue one
                raise
            if q.connection.get(key_of(project)) == job_id.encode():
                q.connection.expire(key_of(project), RESULT_TTL)  # queued: held until the job ends
        except redis.RedisError as exc:
            raise QueueUnavailable(exc) from None
        return {"queue": q.name, "job": job.id, "run": run}

    return start


def _claim(conn: redis.Redis, key: str, job_id: str) -> Optional[str]:
    """Make ``job_id`` the project's round and return None, or return the id of the round that is
    already queued or running. A key whose job has ended (or is gone) is taken over, compare-and-set,
    so of two web processes seeing the same ended round only one queues the next."""
    for _ in range(_CLAIM_TRIES):
        if conn.set(key, job_id, nx=True, ex=CLAIM_TTL):
            return None
        holder = conn.get(key)
        if holder is None:
            continue  # freed meanwhile
        holder = holder.decode()
        if _active(conn, key, holder):
            return holder
        if _take_over(conn, key, holder, job_id):
            return None
    holder = conn.get(key)  # lost every race: another process has just queued a round
    return holder.decode() if holder is not None else "unknown"


def _active(conn: redis.Redis, key: str, job_id: str) -> bool:
    """The round ``key`` names is queued or running, or being queued (a fresh claim)."""
    # the key's TTL is read BEFORE the job is looked for: a claim is extended only after its job was saved, so
    # a long TTL read first and no job found after is a round that is gone, never one being queued right now
    ttl = conn.ttl(key)
    try:
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        status = job.get_status()
    except NoSuchJobError:
        return 0 < ttl <= CLAIM_TTL
    except InvalidJobOperation:  # saved without a status yet: being queued
        return True
    return getattr(status, "value", status) not in ENDED_STATES


def _take_over(conn: redis.Redis, key: str, old: str, job_id: str) -> bool:
    """Point ``key`` at ``job_id`` if it still names the ended job ``old``."""
    with conn.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.get(key) != old.encode():
                return False
            pipe.multi()
            pipe.set(key, job_id, ex=CLAIM_TTL)
            pipe.execute()
            return True
        except redis.WatchError:
            return False  # another process took it first


def _release(conn: redis.Redis, key: str, job_id: str) -> None:
    """Delete ``key`` if it still names ``job_id`` (an enqueue that failed)."""
    try:
        with conn.pipeline() as pipe:
            pipe.watch(key)
            if pipe.get(key) == job_id.encode():
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
    except redis.RedisError:
        pass  # the key names a job that does not exist: the next claim takes it over


class ThreadStarter:
    """Embedded mode: a round runs in a background thread of this process, one at a time."""

    def __init__(self, settings: Settings, on_done: Optional[Callable[[], None]] = None):
        self.settings = settings
        self.on_done = on_done
        self._lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None

    def __call__(self, project: Optional[int], data_from: str) -> dict:
        with self._lock:
            if self.thread is not None and self.thread.is_alive():
                return {"started": False, "running": True,
                        "note": "a training round is already running; these corrections join the next one"}
            run = new_run_id()
            self.thread = threading.Thread(target=self._run, args=(project, data_from, run), name=f"train-{run}",
                                           daemon=True)
            self.thread.start()
        return {"thread": self.thread.name, "run": run}

    def _run(self, project: Optional[int], data_from: str, run: str) -> None:
        report = run_training(self.settings, project, data_from, run)
        log.info("training run %s: %s %s", run, report.status, report.reason)
        if self.on_done is not None:
            self.on_done()
