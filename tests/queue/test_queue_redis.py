"""Redis stopped and restarted under a running service (a private redis-server), and the metrics."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest
import redis

from tests.service.payloads import keypoint, predict_body

CLICK = [keypoint(50, 50, 160, 120)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self, tmp_path):
        self.port, self.dir = free_port(), tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--daemonize", "yes", "--dir", str(self.dir),
                        "--pidfile", str(self.dir / "redis.pid")], check=True, capture_output=True)
        for _ in range(100):
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.2).ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        pytest.fail("the private redis-server did not answer")

    def stop(self) -> None:
        try:
            redis.Redis.from_url(self.url, socket_timeout=1).shutdown(nosave=True)
        except redis.RedisError:  # shutdown closes the connection it came on
            pass
        for _ in range(100):
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.2).ping()
            except redis.RedisError:
                return
            time.sleep(0.02)


@pytest.fixture
def private_redis(tmp_path):
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_down_then_back(private_redis, queue_env, queue_app, workers, media_server):
    queue_env["REDIS_URL"] = private_redis.url
    workers.start(1)
    client = queue_app(SEGAGENT_REDIS_TIMEOUT=0.5).test_client()
    body = predict_body(f"{media_server}/disk.png", CLICK)
    assert client.post("/predict", json=body).status_code == 200

    private_redis.stop()
    started = time.monotonic()
    health = client.get("/health")
    reply = client.post("/predict", json=body)
    assert time.monotonic() - started < 3  # nothing hangs
    assert health.status_code == 503 and health.json["redis"].startswith("unreachable")
    assert reply.status_code == 503 and reply.is_json and "Redis" in reply.json["error"]
    assert client.get("/metrics").status_code == 200 and b"segagent_queue_up 0.0" in client.get("/metrics").data

    private_redis.start()  # an empty Redis (no persistence): the worker must find it again
    workers.wait_for(1, timeout=30)
    assert client.get("/health").status_code == 200
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.json


def test_metrics_show_queue_depth_workers_and_latency(queue_app, queue_env, workers, media_server):
    from rq import Queue
    from rq.serializers import JSONSerializer

    app = queue_app()
    client = app.test_client()
    prefix = queue_env["SEGAGENT_QUEUE_PREFIX"]
    conn = redis.Redis.from_url(queue_env["REDIS_URL"])
    batch = Queue(f"{prefix}-batch", connection=conn, serializer=JSONSerializer)
    for _ in range(3):
        batch.enqueue("segagent_backend.queue.jobs.noop", {"n": 1})
    text = client.get("/metrics").data.decode()
    assert f'segagent_queue_depth{{queue="{prefix}-batch"}} 3.0' in text
    assert f'segagent_queue_depth{{queue="{prefix}-interactive"}} 0.0' in text
    assert "segagent_workers 0.0" in text

    workers.start(1)
    assert client.post("/predict", json=predict_body(f"{media_server}/disk.png", CLICK)).status_code == 200
    text = client.get("/metrics").data.decode()
    assert f'segagent_queue_depth{{queue="{prefix}-batch"}} 0.0' in text  # the worker ran the no-ops
    assert "segagent_workers 1.0" in text
    assert f'segagent_job_seconds_count{{queue="{prefix}-interactive"}} 1.0' in text
    health = client.get("/health").json
    assert health["mode"] == "queue" and health["model"] == "ready"
    assert [w["model_version"] for w in health["workers"]] == [app.config["SEGAGENT_VERSION"].model_version]
    time.sleep(0.6)  # the next health beat (every half heartbeat) carries the warm embedding cache
    (worker,) = client.get("/health").json["workers"]
    assert worker["cache_entries"] == 1 and worker["cache_bytes"] > 0 and worker["device"] == "auto"
