"""TASKS_CREATED -> one planning job on the batch queue (checked in Redis), answered at once."""
from __future__ import annotations

import time

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

import types

from segagent_backend.queue import planner

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
    assert queued[0].func_name == "segagent_backend.queue.planner.plan_tasks"
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
    context = types.SimpleNamespace(settings=make_settings(), model_version="grabcut-v1")  # the worker's
    calls = []
    monkeypatch.setattr(planner, "enqueue", lambda settings, project, task_ids, **kw: (
        calls.append((project, task_ids, kw)) or planner.Plan(project, kw["model_version"], queued=task_ids)))
    result = planner.plan_tasks({"project": 3, "task_ids": [11, 12]}, context=context)
    assert calls == [(3, [11, 12], {"model_version": "grabcut-v1"})]
    assert result["queued"] == [11, 12] and result["model_version"] == "grabcut-v1"


# ----- issue 23: one queued or running round per project, whoever calls (real Redis) ---------------------

TRAINING = {"SEGAGENT_POLICY": "org/base-policy"}  # a hub id: the web process loads nothing, rounds may start


def train_jobs(redis_url: str, prefix: str) -> list:
    queue = Queue(f"{prefix}-train", connection=redis.Redis.from_url(redis_url), serializer=JSONSerializer)
    return queue.get_jobs()


def start_training(client, project: int, **headers):
    return client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}}, headers=headers)


def test_twenty_start_training_calls_from_two_web_processes_queue_one_round_per_project(queue_app, redis_url,
                                                                                         prefix):
    from concurrent.futures import ThreadPoolExecutor

    # two web processes, one Redis; THREADS: ten calls at once per process must not be turned away as busy
    apps = [queue_app(THREADS="16", **TRAINING), queue_app(THREADS="16", **TRAINING)]
    calls = [(apps[i % 2], 7 if i < 10 else 8) for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda call: start_training(call[0].test_client(), call[1]), calls))
    assert all(r.status_code == 200 for r in replies), [r.json for r in replies]
    jobs = train_jobs(redis_url, prefix)
    assert sorted(job.args[0]["project"] for job in jobs) == [7, 8]
    by_project = {job.args[0]["project"]: job.id for job in jobs}
    for reply, (_, project) in zip(replies, calls):  # the others name the round already queued
        assert reply.json["training"]["job"] == by_project[project], reply.json
    assert sum(r.json["training"]["started"] for r in replies) == 2


def test_a_round_that_ended_lets_the_next_one_queue(queue_app, redis_url, prefix):
    client = queue_app(**TRAINING).test_client()
    first = start_training(client, 7).json["training"]
    assert first["started"] and not start_training(client, 7).json["training"]["started"]
    job = train_jobs(redis_url, prefix)[0]
    job.cancel()  # the round ended (finished, failed or canceled alike): the project is free again
    second = start_training(client, 7).json["training"]
    assert second["started"] and second["job"] != first["job"]
    assert [j.id for j in train_jobs(redis_url, prefix)] == [second["job"]]


def test_a_round_saved_but_not_yet_queued_holds_its_project(queue_app, redis_url, prefix):
    """rq saves a job ("created") before it queues it: another web process that looks in that moment must
    see the round, not a free project (two rounds of project 7 were queued when it took such a key over)."""
    from rq.job import Job, JobStatus

    from segagent_backend.queue.names import QueueNames

    conn = redis.Redis.from_url(redis_url)
    job = Job.create("segagent_backend.queue.training.train", args=({"project": 7},), connection=conn,
                     serializer=JSONSerializer, status=JobStatus.CREATED, id=f"{prefix}-round")
    job.save()
    conn.set(QueueNames(prefix).train_key(7), job.id)
    reply = start_training(queue_app(**TRAINING).test_client(), 7).json["training"]
    assert not reply["started"] and reply["job"] == job.id
    assert train_jobs(redis_url, prefix) == []


def test_a_round_queued_while_another_process_looks_at_its_claim_is_not_taken_over(monkeypatch, redis_url, prefix):
    """Process A claimed project 7 (a key naming job X, no job yet); process B looks: X is not found, and right
    then A queues X and extends its key. B must not read that as a round gone and queue a second one."""
    from rq.exceptions import NoSuchJobError

    from segagent_backend.queue import training
    from segagent_backend.queue.names import QueueNames

    conn = redis.Redis.from_url(redis_url)
    key, x = QueueNames(prefix).train_key(7), f"{prefix}-x"
    conn.set(key, x, ex=training.CLAIM_TTL)
    queue = Queue(f"{prefix}-train", connection=conn, serializer=JSONSerializer)
    real_fetch = training.Job.fetch

    def fetch_as_a_finishes(job_id, *args, **kwargs):
        try:
            return real_fetch(job_id, *args, **kwargs)
        except NoSuchJobError:  # A's next two steps happen now, between B's reads
            queue.enqueue("segagent_backend.queue.training.train", {"project": 7}, job_id=x)
            conn.expire(key, training.RESULT_TTL)
            raise

    monkeypatch.setattr(training.Job, "fetch", staticmethod(fetch_as_a_finishes))
    assert training._claim(conn, key, f"{prefix}-y") == x
    assert conn.get(key) == x.encode()


def test_annotations_without_a_project_queue_no_round(queue_app, redis_url, prefix):
    from tests.service.test_webhook_limits import bulk_event

    client = queue_app(SEGAGENT_TRAIN_EVERY="1", **TRAINING).test_client()
    reply = client.post("/webhook", json=bulk_event(5, project=None))
    assert reply.status_code == 200 and len(reply.json["recorded"]) == 5 and "training" not in reply.json
    assert train_jobs(redis_url, prefix) == []


def test_with_basic_auth_unauthenticated_webhooks_queue_nothing(queue_app, redis_url, prefix):
    from tests.service.test_webhook_limits import basic

    client = queue_app(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret-pass", **TRAINING).test_client()
    for headers in ({}, basic("ls", "wrong")):
        assert start_training(client, 7, **headers).status_code == 401
    assert train_jobs(redis_url, prefix) == []
    assert start_training(client, 7, **basic("ls", "s3cret-pass")).json["training"]["started"]
    assert len(train_jobs(redis_url, prefix)) == 1
