"""The learning loop through RQ: the web process records corrections and queues a round on the train
queue; a real `segagent worker` trains, evaluates, promotes, reloads, and answers with the new version."""
from __future__ import annotations

import time

import pytest
import redis

from segagent_backend.learning import list_reports
from segagent_backend.registry import Registry
from tests.service.payloads import CONFIG, predict_body
from tests.service.test_learning_loop import FAST_ROUND, annotation_event


def test_webhook_round_runs_on_a_worker_and_the_new_version_serves(queue_app, workers, queue_env, tmp_path,
                                                                    media_server, disk_image, tiny_qwen2_vl):
    base = tiny_qwen2_vl
    shared = tmp_path / "worker0"  # MODEL_DIR of worker 0: the web process must share it (corrections, versions)
    env = {"SEGAGENT_POLICY": str(base), "SEGAGENT_TRAIN_EVERY": "3", **FAST_ROUND}
    workers.start(1, **env)
    app = queue_app(MODEL_DIR=str(shared), **env)
    client = app.test_client()
    url = f"{media_server}/disk.png"
    before = client.post("/predict", json=predict_body(url, None)).json["results"][0]["model_version"]

    replies = [client.post("/webhook", json=annotation_event(t, url, disk_image[1])).json for t in (1, 2, 3)]
    job = replies[2]["training"][0]
    assert job["queue"].endswith("-train") and job["started"]
    settings = app.config["SEGAGENT_SETTINGS"]
    end = time.monotonic() + 240
    while time.monotonic() < end and not [r for r in list_reports(settings) if r.status != "running"]:
        time.sleep(0.5)
    reports = list_reports(settings)
    assert reports and reports[-1].status == "promoted", (reports, workers.logs())
    version = reports[-1].version
    assert Registry(shared, queue_env["REDIS_URL"], queue_env["SEGAGENT_QUEUE_PREFIX"]).announced()[0] == version

    reply = client.post("/predict", json=predict_body(url, None))
    assert reply.status_code == 200, (reply.json, workers.logs())
    assert reply.json["results"][0]["model_version"] == version != before
    assert client.post("/setup", json={"schema": CONFIG, "project": "3.1"}).json["model_version"] == version
    conn = redis.Redis.from_url(queue_env["REDIS_URL"])
    assert conn.llen(f"rq:queue:{queue_env['SEGAGENT_QUEUE_PREFIX']}-train") == 0


def test_start_training_needs_a_queue_when_redis_is_down(make_settings, base_policy_dir):
    from segagent_backend.app import create_app

    settings = make_settings(REDIS_URL="redis://127.0.0.1:1", SEGAGENT_POLICY=str(base_policy_dir),
                             SEGAGENT_REDIS_TIMEOUT="0.2")
    reply = create_app(settings).test_client().post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    assert reply.status_code == 503 and "Redis" in reply.json["error"]


@pytest.fixture
def base_policy_dir(tmp_path):
    folder = tmp_path / "policy"
    folder.mkdir()
    return folder


def test_a_round_whose_worker_is_killed_resumes_on_another(workers, queue_env, tmp_path, media_server, disk_image,
                                                           tiny_qwen2_vl):
    """SIGKILL the worker in the middle of training: the job is re-queued, another worker (sharing
    MODEL_DIR) resumes from the last checkpoint, and the round still ends promoted."""
    import os
    import signal

    from segagent_backend.corrections import CorrectionStore
    from segagent_backend.labelstudio.annotations import corrections_from_webhook
    from segagent_backend.queue.training import queued_starter
    from segagent_backend.settings import Settings

    shared = tmp_path / "shared"
    env = {"SEGAGENT_POLICY": str(tiny_qwen2_vl), **FAST_ROUND,
           "SEGAGENT_TRAIN_EPOCHS": "150", "SEGAGENT_TRAIN_SAVE_STEPS": "10"}
    settings = Settings.from_env({**queue_env, **env, "MODEL_DIR": str(shared)})
    url = f"{media_server}/disk.png"
    CorrectionStore.from_settings(settings).record(
        [c for t in (1, 2, 3) for c in corrections_from_webhook(annotation_event(t, url, disk_image[1]))[0]])
    (victim,) = workers.start(1, model_dir=shared, **env)
    run = queued_starter(settings)(3, "corrections")["run"]
    checkpoints = shared / "training" / run / "rounds" / "0" / "checkpoints"
    end = time.monotonic() + 120
    # a complete checkpoint (trainer_state.json is written last): one cut short is not resumed from
    while time.monotonic() < end and not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.2)
    assert list(checkpoints.glob("checkpoint-*/trainer_state.json")), workers.logs()
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert [r.status for r in list_reports(settings)] == ["killed"]  # its process is gone
    workers.start(1, model_dir=shared, **env)
    end = time.monotonic() + 240
    while time.monotonic() < end and list_reports(settings)[-1].status in ("running", "killed"):
        time.sleep(0.5)
    (report,) = list_reports(settings)
    assert report.run == run and report.status == "promoted", (report, workers.logs())
    assert "checkpoint-" in report.metrics["training"][0]["resumed_from"]
