"""A real `segagent worker` picks up a promoted model version between jobs, without a restart."""
from __future__ import annotations

import time

from segagent_backend.registry import Registry
from tests.service.payloads import CONFIG, keypoint, predict_body


def test_worker_reloads_a_promoted_version_between_jobs(queue_app, workers, queue_env, tmp_path, tiny_policies,
                                                        media_server):
    # the pool gives worker 0 MODEL_DIR=tmp_path/worker0: register there, announce through Redis
    registry = Registry(tmp_path / "worker0", queue_env["REDIS_URL"], queue_env["SEGAGENT_QUEUE_PREFIX"])
    registry.register(tiny_policies[0])
    registry.register(tiny_policies[1])
    registry.promote("v1")
    workers.start(1)
    client = queue_app().test_client()
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)])

    def served() -> str:
        reply = client.post("/predict", json=body)
        assert reply.status_code == 200, (reply.json, workers.logs())
        return reply.json["results"][0]["model_version"]

    assert served() == "v1"
    assert client.post("/setup", json={"schema": CONFIG, "project": "1.1"}).json["model_version"] == "v1"
    registry.promote("v2")
    assert served() == "v2"  # the same worker process, reloaded between jobs
    assert client.post("/setup", json={"schema": CONFIG, "project": "1.1"}).json["model_version"] == "v2"
    registry.rollback()
    assert served() == "v1"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    registry.register(broken, {"version": "broken"})
    registry.promote("broken")
    assert served() == "v1"  # the failed load leaves v1 serving
    end = time.monotonic() + 10
    while time.monotonic() < end:  # the next heartbeat publishes the error
        worker = client.get("/health").json["workers"][0]
        if "reload_error" in worker:
            break
        time.sleep(0.2)
    assert "broken" in worker["reload_error"] and worker["model_version"] == "v1"
    assert len(workers.procs) == 1 and workers.procs[0].poll() is None
