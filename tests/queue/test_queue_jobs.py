"""The worker-side job functions, called directly: retries of transient failures, deadlines."""
from __future__ import annotations

import time

import pytest

from segagent_backend.queue import jobs
from segagent_backend.queue.jobs import PredictJob


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError (this test needs no GPU)."""


@pytest.fixture
def predictor(make_settings):
    return jobs.resident_predictions(make_settings(SEGAGENT_RETRY_BACKOFF=0.01, SEGAGENT_TRANSIENT_RETRIES=2))


def test_out_of_memory_runs_the_chunk_again(predictor, monkeypatch):
    calls = []

    def predict(tasks, *args):
        calls.append([t["id"] for t in tasks])
        if len(calls) == 1:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [{"result": [], "score": 1.0, "model_version": "v"} for _ in tasks]

    monkeypatch.setattr(predictor, "predict", predict)
    results = jobs.predict_with_retries(predictor, PredictJob([{"id": 1}, {"id": 2}], "<View/>"), None)
    assert calls == [[1, 2], [1, 2]] and all("result" in r for r in results)


def test_only_the_tasks_that_failed_transiently_are_retried_and_retries_are_bounded(predictor, monkeypatch):
    calls = []

    def predict(tasks, *args):
        calls.append([t["id"] for t in tasks])
        return [predictor.error("unreachable", 502) if t["id"] == 2 else
                predictor.error("not an image", 422) if t["id"] == 3 else
                {"result": [], "score": 1.0, "model_version": "v"} for t in tasks]

    monkeypatch.setattr(predictor, "predict", predict)
    results = jobs.predict_with_retries(predictor, PredictJob([{"id": 1}, {"id": 2}, {"id": 3}], "<View/>"), None)
    assert calls == [[1, 2, 3], [2], [2]]  # 422 is the input's fault: never retried
    assert "result" in results[0] and results[1]["status"] == 502 and results[2]["status"] == 422


def test_other_errors_are_not_retried_in_the_job(predictor, monkeypatch):
    monkeypatch.setattr(predictor, "predict", lambda *a: (_ for _ in ()).throw(KeyError("bug")))
    with pytest.raises(KeyError):  # RQ records it (and re-queues up to SEGAGENT_JOB_RETRIES times)
        jobs.predict_with_retries(predictor, PredictJob([{"id": 1}], "<View/>"), None)


def test_a_job_started_after_its_deadline_does_no_work(predictor, monkeypatch):
    monkeypatch.setattr(predictor, "predict", lambda *a: pytest.fail("predicted past the deadline"))
    monkeypatch.setattr(jobs, "resident", lambda: predictor)
    results = jobs.predict(PredictJob([{"id": 1}, {"id": 2}], "<View/>", deadline=time.time() - 1).to_json())
    assert [r["status"] for r in results] == [504, 504] and all("result" not in r for r in results)
