"""Putting a job on a queue: every job gets the same timeout, retry and failure TTL rules, written once here."""
from __future__ import annotations

from typing import Callable, Optional

import redis
from rq import Queue
from rq.job import Job, Retry
from rq.serializers import JSONSerializer

from ..settings import Settings
from .names import QueueNames, connect

FAILURE_TTL = 7 * 24 * 3600  # failed jobs stay visible (segagent jobs) for a week


def open_queue(settings: Settings, kind: str, connection: Optional[redis.Redis] = None) -> Queue:
    """The ``kind`` queue (interactive, batch, train) of this deployment's prefix on REDIS_URL."""
    connection = connection or connect(settings.redis_url, settings.redis_timeout)
    return Queue(QueueNames(settings.queue_prefix).queue(kind), connection=connection, serializer=JSONSerializer)


def submit(queue: Queue, function: Callable, payload: dict, settings: Settings, *, description: str, result_ttl: int,
           job_timeout: Optional[int] = None, ttl: Optional[int] = None, job_id: Optional[str] = None) -> Job:
    """Enqueue ``function`` (one of ``worker.JOBS``: RQ stores its name, the worker looks it up there) with a
    JSON ``payload``.

    ``job_timeout`` defaults to SEGAGENT_JOB_TIMEOUT; SEGAGENT_JOB_RETRIES re-queues a job whose worker
    died or that crashed; ``ttl``: drop the job unrun when nobody picked it up within that many seconds;
    ``job_id``: an id chosen beforehand (default: a new one).
    """
    return queue.enqueue(
        function, payload, job_timeout=job_timeout or settings.job_timeout, result_ttl=result_ttl,
        failure_ttl=FAILURE_TTL, ttl=ttl, retry=Retry(max=settings.job_retries) if settings.job_retries else None,
        description=description, job_id=job_id,
    )
