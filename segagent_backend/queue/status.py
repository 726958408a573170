"""What the queues and workers look like now: depths, running and failed jobs, worker health.

Read by ``/health``, ``/metrics`` and ``segagent jobs``; every figure comes from Redis, so any web
process (or a laptop with the Redis URL) sees the same picture.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from .names import KINDS, QueueNames


@dataclass
class WorkerHealth:
    """What a worker publishes every heartbeat (a Redis hash that expires when it stops)."""

    name: str
    host: str = ""
    pid: int = 0
    queues: str = ""
    device: str = ""
    model_version: str = ""
    model: str = ""  # the model host's status: loading, ready, failed: ...
    cache_entries: int = 0
    cache_bytes: int = 0
    jobs_done: int = 0
    current_job: str = ""
    heartbeat_at: float = 0.0
    reload_error: str = ""  # a promoted version that failed to load ("" = none); the old one serves

    def to_redis(self) -> dict:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_redis(cls, data: dict) -> "WorkerHealth":
        text = {k.decode(): v.decode() for k, v in data.items()}
        kinds = {"pid": int, "cache_entries": int, "cache_bytes": int, "jobs_done": int, "heartbeat_at": float}
        values = {k: kinds.get(k, str)(v) for k, v in text.items() if k in cls.__dataclass_fields__}
        return cls(**values)


@dataclass
class QueueState:
    name: str
    queued: int
    running: int
    failed: int


@dataclass
class FailedJob:
    id: str
    queue: str
    reason: str  # the last line of the exception, e.g. "JobTimeoutException: ..." or an abandoned job
    ended_at: Optional[str] = None


@dataclass
class Snapshot:
    queues: list[QueueState] = field(default_factory=list)
    workers: list[WorkerHealth] = field(default_factory=list)


def queue(conn: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=conn, serializer=JSONSerializer)


def workers(conn: redis.Redis, names: QueueNames) -> list[WorkerHealth]:
    """Live workers; names whose health hash expired (killed, lost) are pruned from the set."""
    members = sorted(m.decode() for m in conn.smembers(names.workers_key))
    if not members:
        return []
    with conn.pipeline() as pipe:
        for member in members:
            pipe.hgetall(names.health_key(member))
        hashes = pipe.execute()
    alive, dead = [], []
    for member, data in zip(members, hashes):
        (alive.append(WorkerHealth.from_redis(data)) if data else dead.append(member))
    if dead:
        conn.srem(names.workers_key, *dead)
    return alive


def snapshot(conn: redis.Redis, names: QueueNames) -> Snapshot:
    """Depth, running and failed counts per queue (priority order) and the live workers."""
    states = []
    for kind in KINDS:
        name = names.queue(kind)
        # StartedJobRegistry.count() first re-queues jobs whose worker stopped beating
        running = StartedJobRegistry(name, connection=conn, serializer=JSONSerializer).count
        failed = FailedJobRegistry(name, connection=conn, serializer=JSONSerializer).count
        states.append(QueueState(name, queue(conn, name).count, running, failed))
    return Snapshot(states, workers(conn, names))


def running_jobs(conn: redis.Redis, names: QueueNames) -> list[tuple[str, str, str]]:
    """(queue, job id, worker) of every job being executed now."""
    rows = []
    for name in names.queues():
        registry = StartedJobRegistry(name, connection=conn, serializer=JSONSerializer)
        for job_id in registry.get_job_ids():
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer) if conn.exists(Job.key_for(job_id)) else None
            rows.append((name, job_id, job.worker_name or "" if job else ""))
    return rows


def failed_jobs(conn: redis.Redis, names: QueueNames, limit: int = 20) -> list[FailedJob]:
    """The most recent failures of every queue with their reason (kept for SEGAGENT failure_ttl)."""
    failures = []
    for name in names.queues():
        registry = FailedJobRegistry(name, connection=conn, serializer=JSONSerializer)
        for job_id in registry.get_job_ids(0, limit - 1, desc=True):
            try:
                job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
            except Exception:  # expired between the listing and the fetch
                continue
            result = job.latest_result()
            text = (result.exc_string if result is not None and result.exc_string else job.exc_info) or "unknown"
            reason = text.strip().splitlines()[-1] if text.strip() else "unknown"
            ended = job.ended_at.isoformat() if job.ended_at else None
            failures.append(FailedJob(job_id, name, reason, ended))
    return failures
