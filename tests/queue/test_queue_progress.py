"""`segagent preannotate` follows its jobs: tasks of finished and failed jobs, until none is left; a finished
job's per-task outcomes count task by task (written, skipped, failed with the reason)."""
from __future__ import annotations

import json
import uuid

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from segagent_backend.cli.errors import CommandFailed
from segagent_backend.cli.jobs import report_plan
from segagent_backend.queue.planner import Plan, follow, progress


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


def test_tasks_count_by_their_outcome_and_failures_name_their_reasons(make_settings, redis_url, capsys):
    prefix = f"prog{uuid.uuid4().hex[:8]}"
    settings = make_settings(REDIS_URL=redis_url, SEGAGENT_QUEUE_PREFIX=prefix)
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(f"{prefix}-batch", connection=connection, serializer=JSONSerializer)
    # a job that finished but wrote nothing for one of its tasks (what a worker without a policy returns)
    outcomes = {"tasks": [{"task": 1, "outcome": "written", "reason": ""},
                          {"task": 2, "outcome": "failed", "reason": "automatic predictions need a SegAgent policy"},
                          {"task": 3, "outcome": "skipped", "reason": "already holds a prediction of v"}]}
    try:
        finished = queue.enqueue("json.loads", json.dumps(outcomes))
        crashed = queue.enqueue("math.sqrt", -1.0)  # its two tasks fail with the job's reason
        plan = Plan(project=1, model_version="v", queued=[1, 2, 3, 4, 5], jobs=[finished.id, crashed.id],
                    job_tasks=[3, 2])
        SimpleWorker([queue], connection=connection, serializer=JSONSerializer).work(burst=True)
        state = follow(settings, plan, interval=0.01)
        assert (state.tasks_written, state.tasks_skipped, state.tasks_failed) == (1, 1, 3)
        assert state.failures[0] == {"task": 2, "reason": "automatic predictions need a SegAgent policy"}
        assert [f["task"] for f in state.failures] == [2, 4, 5] and "math domain error" in state.failures[1]["reason"]
        with pytest.raises(CommandFailed, match=r"3 of 5 task\(s\) failed.*task 2: automatic predictions need"):
            report_plan(settings, plan, wait=True)
        summary = json.loads(capsys.readouterr().out)
        assert summary["tasks_failed"] == 3 and summary["tasks_written"] == 1 and summary["failures"][0]["task"] == 2
    finally:
        for key in connection.scan_iter(f"rq:*{prefix}*"):
            connection.delete(key)
        connection.srem("rq:queues", f"rq:queue:{prefix}-batch")
