"""TASKS_CREATED -> one planning job on the batch queue (checked in Redis), answered at once."""
from __future__ import annotations

import time

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from segagent_backend.queue import jobs, preannotate

LS = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "token"}  # never called in the request


def tasks_created(*ids, project=3) -> dict:
    return {"action": "TASKS_CREATED", "project": {"id": project, "title": "p"},
            "tasks": [{"id": i, "data": {"image": "/data/upload/3/a.png"}, "project": project} for i in ids]}


def batch_jobs(redis_url: str, prefix: str) -> list:
    queue = Queue(f"{prefix}-batch", connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    return queue.get_jobs()


def test_tasks_created_queues_one_planning_job_with_those_tasks(queue_app, redis_url, prefix):
    client = queue_app(SEGAGENT_PREANNOTATE_ON_CREATE="true", **LS).test_client()
    started = time.perf_counter()
    reply = client.post("/webhook", json=tasks_created(11, 12, 13))
    assert time.perf_counter() - started < 0.5
    assert reply.status_code == 200, reply.json
    queued = batch_jobs(redis_url, prefix)
    assert [job.id for job in queued] == [reply.json["enqueued"]["job"]]
    assert queued[0].func_name == "segagent_backend.queue.preannotate.plan"
    assert list(queued[0].args) == [{"project": 3, "task_ids": [11, 12, 13]}]
    assert reply.json["enqueued"]["task_ids"] == [11, 12, 13] and reply.json["enqueued"]["queue"] == f"{prefix}-batch"


@pytest.mark.parametrize("env, why", [({}, "SEGAGENT_PREANNOTATE_ON_CREATE is off"),
                                      ({"SEGAGENT_PREANNOTATE_ON_CREATE": "true"}, "LABEL_STUDIO_URL")])
def test_nothing_is_queued_when_off_or_without_label_studio(queue_app, redis_url, prefix, env, why):
    reply = queue_app(**env).test_client().post("/webhook", json=tasks_created(11))
    assert reply.status_code == 200 and why in reply.json["note"] and "enqueued" not in reply.json
    assert batch_jobs(redis_url, prefix) == []


def test_without_redis_the_reply_says_why(make_client):
    reply = make_client(SEGAGENT_PREANNOTATE_ON_CREATE="true", **LS).post("/webhook", json=tasks_created(11))
    assert reply.status_code == 200 and "REDIS_URL" in reply.json["note"]


@pytest.mark.parametrize("body", [
    {"tasks": [{"id": "11"}]}, {"tasks": [{"id": True}]}, {"tasks": [{"data": {}}]}, {"tasks": []},
    {"tasks": "11"}, {"tasks": [11]}, {"project": None}, {"project": {"title": "no id"}},
])
def test_malformed_tasks_created_is_a_400_and_queues_nothing(queue_app, redis_url, prefix, body):
    client = queue_app(SEGAGENT_PREANNOTATE_ON_CREATE="true", **LS).test_client()
    reply = client.post("/webhook", json={**tasks_created(11), **body})
    assert reply.status_code == 400 and reply.json["error"]
    assert batch_jobs(redis_url, prefix) == []


def test_the_planning_job_runs_the_planner_for_exactly_those_tasks(monkeypatch, make_settings):
    class Resident:
        settings = make_settings()
        model_version = "grabcut-v1"

    calls = []
    monkeypatch.setattr(jobs, "resident", Resident)
    monkeypatch.setattr(preannotate, "enqueue", lambda settings, project, task_ids, **kw: (
        calls.append((project, task_ids, kw)) or preannotate.Plan(project, kw["model_version"], queued=task_ids)))
    result = preannotate.plan({"project": 3, "task_ids": [11, 12]})
    assert calls == [(3, [11, 12], {"model_version": "grabcut-v1"})]
    assert result["queued"] == [11, 12] and result["model_version"] == "grabcut-v1"
