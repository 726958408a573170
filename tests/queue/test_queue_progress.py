"""`segagent preannotate` follows its jobs: tasks of finished and failed jobs, until none is left."""
from __future__ import annotations

import uuid

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from segagent_backend.queue.preannotate import Plan, follow, progress


def test_progress_counts_tasks_of_finished_and_failed_jobs(make_settings, redis_url):
    prefix = f"prog{uuid.uuid4().hex[:8]}"
    settings = make_settings(REDIS_URL=redis_url, SEGAGENT_QUEUE_PREFIX=prefix)
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(f"{prefix}-batch", connection=connection, serializer=JSONSerializer)
    try:
        ok = [queue.enqueue("time.time"), queue.enqueue("time.time")]
        bad = queue.enqueue("math.sqrt", -1.0)  # ValueError: a failed job
        plan = Plan(project=1, model_version="v", queued=list(range(7)), jobs=[j.id for j in ok + [bad]],
                    job_tasks=[3, 2, 2])
        assert progress(settings, plan).jobs_left == 3
        SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(burst=True)
        state = follow(settings, plan, interval=0.01)
        assert (state.tasks_done, state.tasks_failed, state.jobs_left) == (5, 2, 0)
    finally:
        for key in connection.scan_iter(f"rq:*{prefix}*"):
            connection.delete(key)
        connection.srem("rq:queues", f"rq:queue:{prefix}-batch")
