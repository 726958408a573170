"""Failover for clicks: a started interactive job whose worker died runs again on another worker now.

RQ notices a dead worker's job only when its execution lease expires (two SEGAGENT_WORKER_HEARTBEATs,
then the next maintenance pass): fine for batch and train jobs, far too late for an annotator's click.
So a worker also refreshes a short liveness key (``QueueNames.alive_key``, TTL SEGAGENT_CLICK_FAILOVER
seconds) about three times per TTL, and the web process waiting for a click checks it while it waits:
a job that is *started* by a worker that is known (``known_key``) but no longer alive is put back at
the FRONT of its queue, where an idle worker takes it at once.

Idempotent: one re-queue per (job, dead worker), taken with SET NX, and the job is re-queued only if
it is still started by that worker (WATCH). The job keeps its id, so its result stream is the one
the web process already reads: whichever run writes a final result first is the answer; a late
duplicate (the first worker was slow, not dead) finds that answer and returns it without running.
"""
from __future__ import annotations

import logging
from typing import Iterable

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from .names import QueueNames

log = logging.getLogger(__name__)

LOCK_SECONDS = 120  # longer than any click deadline waits


class ClickFailover:
    """Re-queues started jobs of ``queue`` whose worker stopped refreshing its liveness key."""

    def __init__(self, connection: redis.Redis, names: QueueNames, queue: Queue):
        self.connection = connection
        self.names = names
        self.queue = queue
        self.requeued: list[tuple[str, str]] = []  # (job id, dead worker), for logs and tests

    def check(self, job_ids: Iterable[str]) -> list[str]:
        """Two pipelined round trips: the jobs' status and worker, then those workers' liveness.
        Returns the ids re-queued now."""
        job_ids = list(job_ids)
        if not job_ids:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(Job.key_for(job_id), "status", "worker_name")
            rows = pipe.execute()
        started = [(job_id, worker.decode()) for job_id, (state, worker) in zip(job_ids, rows)
                   if state is not None and state.decode() == JobStatus.STARTED.value and worker]
        if not started:
            return []
        with self.connection.pipeline(transaction=False) as pipe:
            for _, worker in started:
                pipe.exists(self.names.alive_key(worker))
                pipe.exists(self.names.known_key(worker))
            flags = pipe.execute()
        done = []
        for (job_id, worker), alive, known in zip(started, flags[0::2], flags[1::2]):
            if known and not alive and self.requeue(job_id, worker):
                done.append(job_id)
        return done

    def requeue(self, job_id: str, worker: str) -> bool:
        """Put ``job_id`` (started by the dead ``worker``) back at the front of its queue, once."""
        if not self.connection.set(self.names.failover_key(job_id, worker), "1", nx=True, ex=LOCK_SECONDS):
            return False  # another web process (or an earlier check) did it
        registry = StartedJobRegistry(self.queue.name, connection=self.connection, serializer=JSONSerializer)
        job_key = Job.key_for(job_id)
        with self.connection.pipeline() as pipe:
            try:
                pipe.watch(job_key)
                state, owner = pipe.hmget(job_key, "status", "worker_name")
                if state is None or state.decode() != JobStatus.STARTED.value or (owner or b"").decode() != worker:
                    return False  # finished, failed or already taken by someone else meanwhile
                try:
                    job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
                except NoSuchJobError:
                    return False
                # the dead worker's execution entries: left there, RQ's lease handling would later
                # retry (or fail) the job while the new run is on it
                stale = [e for e in pipe.zrange(registry.key, 0, -1) if e.decode().startswith(f"{job_id}:")]
                pipe.multi()
                if stale:
                    pipe.zrem(registry.key, *stale)
                self.queue.enqueue_job(job, pipeline=pipe, at_front=True)
                pipe.execute()
            except redis.WatchError:
                return False
        self.requeued.append((job_id, worker))
        log.warning("click job %s: worker %s stopped beating (SEGAGENT_CLICK_FAILOVER); re-queued at the front",
                    job_id, worker)
        return True
