"""The worker-side job functions, called directly: retries of transient failures, deadlines, the worker
context every job needs, and a request that arrives parsed (the worker never parses it again)."""
from __future__ import annotations

import json
import time

import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

from segagent_backend import assembly
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG, parse_label_config
from segagent_backend.labelstudio.request import PredictRequest, parse_predict
from segagent_backend.queue import jobs
from segagent_backend.queue.context import NoWorkerContext, WorkerContext
from segagent_backend.queue.worker import JOBS, SegagentJob
from tests.service.payloads import keypoint, predict_body


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError (this test needs no GPU)."""


def request_of(*ids, deadline=None) -> PredictRequest:
    return PredictRequest([{"id": i} for i in ids], parse_label_config(EXAMPLE_CONFIG), deadline=deadline)


@pytest.fixture
def predictor(make_settings):
    settings = make_settings(SEGAGENT_RETRY_BACKOFF=0.01, SEGAGENT_TRANSIENT_RETRIES=2)
    return assembly.worker_context(settings).predictions


def test_out_of_memory_runs_the_chunk_again(predictor, monkeypatch):
    calls = []

    def predict(request):
        calls.append([t["id"] for t in request.tasks])
        if len(calls) == 1:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [{"result": [], "score": 1.0, "model_version": "v"} for _ in request.tasks]

    monkeypatch.setattr(predictor, "predict", predict)
    results = jobs.predict_with_retries(predictor, request_of(1, 2))
    assert calls == [[1, 2], [1, 2]] and all("result" in r for r in results)


def test_only_the_tasks_that_failed_transiently_are_retried_and_retries_are_bounded(predictor, monkeypatch):
    calls = []

    def predict(request):
        calls.append([t["id"] for t in request.tasks])
        return [predictor.error("unreachable", 502) if t["id"] == 2 else
                predictor.error("not an image", 422) if t["id"] == 3 else
                {"result": [], "score": 1.0, "model_version": "v"} for t in request.tasks]

    monkeypatch.setattr(predictor, "predict", predict)
    results = jobs.predict_with_retries(predictor, request_of(1, 2, 3))
    assert calls == [[1, 2, 3], [2], [2]]  # 422 is the input's fault: never retried
    assert "result" in results[0] and results[1]["status"] == 502 and results[2]["status"] == 422


def test_other_errors_are_not_retried_in_the_job(predictor, monkeypatch):
    monkeypatch.setattr(predictor, "predict", lambda *a: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(KeyError):  # RQ records it (and re-queues up to SEGAGENT_JOB_RETRIES times)
        jobs.predict_with_retries(predictor, request_of(1))


def test_a_job_started_after_its_deadline_does_no_work(predictor, monkeypatch):
    monkeypatch.setattr(predictor, "predict", lambda *a: pytest.fail("predicted past the deadline"))
    results = jobs.predict(request_of(1, 2, deadline=time.time() - 1).to_json(), context=WorkerContext(predictor))
    assert [r["status"] for r in results] == [504, 504] and all("result" not in r for r in results)


# ----- the worker context: passed by the worker, never found in the environment -----------------------
@pytest.mark.parametrize("name", sorted(n for n in JOBS if not n.endswith(".noop")))
def test_a_job_run_without_a_worker_context_fails_loudly(name, make_settings, monkeypatch):
    monkeypatch.setenv("SEGAGENT_SEGMENTER", "no-such-tool")  # had it loaded from the environment, this would say so
    data = {"tasks": [{"id": 1}], "config": parse_label_config(EXAMPLE_CONFIG).to_json(), "project": 3,
            "task_ids": [1], "model_version": "v", "run": "r"}
    with pytest.raises(NoWorkerContext, match="ran without a worker context: .*`segagent worker` only"):
        JOBS[name](data)


def test_a_queued_job_performed_outside_a_segagent_worker_fails_loudly(redis_url):
    """What a plain ``rq worker`` (or anything but ``ResidentWorker``) would do with the job: no context."""
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(f"ctx-{time.time_ns()}", connection=connection, serializer=JSONSerializer, job_class=SegagentJob)
    try:
        job = queue.enqueue(jobs.predict, request_of(1).to_json())
        fetched = SegagentJob.fetch(job.id, connection=connection, serializer=JSONSerializer)
        with pytest.raises(NoWorkerContext):
            fetched.perform()
    finally:
        queue.delete(delete_jobs=True)


# ----- one parse, at the edge ------------------------------------------------------------------------------
def test_the_request_parsed_at_the_edge_reaches_the_worker_unchanged(make_settings):
    body = predict_body("http://127.0.0.1:9/disk.png", [keypoint(50, 50, 160, 120), keypoint(20, 30, 160, 120,
                                                                                           positive=False, rid="k2")])
    request = parse_predict(body, make_settings())
    sent = json.loads(json.dumps(request.to_json()))  # what Redis holds
    assert PredictRequest.from_json(sent) == request
    assert "<View" not in json.dumps(sent)  # the label config travels parsed, not as text to parse again
    assert [c.positive for c in PredictRequest.from_json(sent).prompt.clicks] == [True, False]


def test_a_worker_does_not_parse_the_request_again(make_settings, media_server):
    """Five clicks, taken by a web process allowing 40, run by a worker whose own limit is 2: parsing again
    there would refuse them (413); the worker predicts."""
    clicks = [keypoint(50 + i, 50, 160, 120, rid=f"k{i}") for i in range(5)]
    request = parse_predict(predict_body(f"{media_server}/disk.png", clicks), make_settings(SEGAGENT_MAX_CLICKS=40))
    strict = make_settings(SEGAGENT_MAX_CLICKS=2)
    with pytest.raises(Exception, match="at most 2"):
        parse_predict(predict_body(f"{media_server}/disk.png", clicks), strict)
    (answer,) = jobs.predict(request.to_json(), context=assembly.worker_context(strict))
    assert "result" in answer and answer["result"], answer


@pytest.mark.parametrize("config, clicks, status", [
    ('<View><Image name="image" value="$image"/></View>', 1, 400),  # no mask control
    (None, 60, 413),  # more clicks than SEGAGENT_MAX_CLICKS (40)
])
def test_a_request_refused_at_the_edge_is_a_json_error_and_queues_nothing(queue_app, redis_url, prefix, config,
                                                                         clicks, status):
    regions = [keypoint(10 + i, 50, 160, 120, rid=f"k{i}") for i in range(clicks)]
    body = predict_body("http://127.0.0.1:9/disk.png", regions, **({"config": config} if config else {}))
    reply = queue_app().test_client().post("/predict", json=body)
    assert reply.status_code == status and reply.is_json and reply.json["error"], reply.data
    connection = redis.Redis.from_url(redis_url)
    for kind in ("interactive", "batch"):
        assert Queue(f"{prefix}-{kind}", connection=connection, serializer=JSONSerializer).count == 0
    assert not any(prefix in (connection.hget(key, "origin") or b"").decode() for key in connection.scan_iter("rq:job:*"))
