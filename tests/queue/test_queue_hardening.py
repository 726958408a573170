"""Issue 23's queue findings, each attack run against the real Redis and real `segagent worker` processes:
jobs past their deadline (3), Redis as a code channel (9) and a refresh thread per /health (11)."""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from segagent_backend.queue import status
from segagent_backend.queue.names import QueueNames
from segagent_backend.registry import Registry, RegistryError
from tests.service.payloads import keypoint, predict_body


def wait_for(condition, seconds: float = 30, what: str = "condition"):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def click_tasks(base: str, count: int, seconds: float) -> dict:
    """One click on ``count`` tasks whose images each take ``seconds`` to arrive (a new URL each)."""
    body = predict_body("", [keypoint(50, 50, 160, 120)])
    tag = uuid.uuid4().hex[:8]
    body["tasks"] = [{"id": i, "data": {"image": f"{base}/slow/{seconds}/disk.png?{tag}-{i}", "expression": "x"}}
                     for i in range(count)]
    return body


# ----- 3: a job runs long past its deadline ------------------------------------------------------------
def test_a_click_request_past_its_deadline_frees_the_worker_for_the_next_click(queue_app, workers, slow_media,
                                                                               media_server):
    """12 tasks of 1 s each used to be one job: the worker decoded for 12 s after the 504 at 3 s, and the
    next annotator's click got a 504 too. Now the tasks fan out in chunks, and every job stops starting
    tasks once the web process has given up: the worker is free about one task after the deadline."""
    workers.start(1)
    client = queue_app(SEGAGENT_INTERACTIVE_DEADLINE=3).test_client()
    started = time.monotonic()
    reply = client.post("/predict", json=click_tasks(slow_media, 12, 1))
    assert time.monotonic() - started < 5
    assert reply.status_code in (200, 504)
    results = reply.json["results"]
    assert len(results) == 12 and results[-1]["status"] == 504
    started = time.monotonic()
    click = client.post("/predict", json=predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)]))
    assert click.status_code == 200, click.json
    assert time.monotonic() - started < 3, "the next click waited for the abandoned request's tasks"
    assert "stopped after" in workers.logs()


def test_embedded_mode_starts_no_task_after_the_deadline(make_client, slow_media):
    """Embedded: nothing stopped the request thread after Label Studio gave up; now the clicks stop at
    SEGAGENT_INTERACTIVE_DEADLINE and the rest are answered 504."""
    client = make_client(SEGAGENT_INTERACTIVE_DEADLINE=2)
    started = time.monotonic()
    reply = client.post("/predict", json=click_tasks(slow_media, 10, 1))
    elapsed = time.monotonic() - started
    assert elapsed < 4.5, f"ran {elapsed:.1f} s for a 2 s deadline"
    results = reply.json["results"]
    assert len(results) == 10
    assert [r.get("status") for r in results[4:]] == [504] * 6
    assert "deadline passed" in results[-1]["error"]


# ----- 9: Redis as a code channel ----------------------------------------------------------------------
def test_a_job_naming_any_function_is_refused_by_the_worker(workers, redis_url, prefix, tmp_path):
    workers.start(1)
    conn = redis.Redis.from_url(redis_url)
    queue = Queue(f"{prefix}-interactive", connection=conn, serializer=JSONSerializer)
    marker = tmp_path / "owned"
    attack = queue.enqueue("os.system", f"touch {marker}")
    # a function of ours with a callback naming another: callbacks are imported and run too
    from rq import Callback
    callback = queue.enqueue("segagent_backend.queue.jobs.noop", {"n": 1},
                             on_success=Callback("segagent_backend.queue.worker.describe_device"))
    fine = queue.enqueue("segagent_backend.queue.jobs.noop", {"n": 2})
    finished = lambda job: job.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED)  # noqa: E731
    wait_for(lambda: all(finished(j) for j in (attack, callback, fine)), what="the three jobs")
    assert not marker.exists(), "os.system ran in the worker"
    assert attack.get_status() == JobStatus.FAILED
    assert "is not one of segagent's jobs" in attack.latest_result().exc_string
    assert callback.get_status() == JobStatus.FAILED
    assert "callbacks" in callback.latest_result().exc_string
    assert fine.get_status() == JobStatus.FINISHED and fine.return_value() == {"n": 2}
    assert "refused" in workers.logs()


def test_a_path_announced_as_the_current_version_is_not_taken(queue_app, queue_env, workers, redis_url, prefix):
    conn = redis.Redis.from_url(redis_url)
    conn.set(f"{prefix}:model:current", json.dumps({"version": "../../../../tmp/evil", "counter": 99}))
    registry = Registry(queue_env["MODEL_DIR"], redis_url, prefix)
    with pytest.raises(RegistryError, match="use letters, digits"):
        registry.announced()
    with pytest.raises(RegistryError):
        registry.model_folder("../../../../tmp/evil")
    client = queue_app().test_client()
    assert not any("evil" in v for v in client.get("/versions").json["versions"])
    assert "evil" not in client.get("/health").json["model_version"]
    # the worker reloads between jobs: it keeps its version and tries to load nothing from /tmp
    workers.start(1)
    queue = Queue(f"{prefix}-interactive", connection=conn, serializer=JSONSerializer)
    job = queue.enqueue("segagent_backend.queue.jobs.noop", {"n": 1})
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, what="the job")
    health = wait_for(lambda: [w for w in status.workers(conn, QueueNames(prefix)) if w.jobs_done], what="health")
    assert "evil" not in health[0].model_version and not health[0].reload_error


# ----- 11: a thread per /health ------------------------------------------------------------------------
class PausableProxy:
    """A TCP proxy on 127.0.0.1 in front of the real Redis; ``paused``: it forwards nothing (a Redis pause)."""

    def __init__(self, port: int):
        self.target = ("127.0.0.1", port)
        self.paused = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source, sink):
        try:
            while data := source.recv(65536):
                while self.paused.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.server.close()


def test_health_during_a_redis_pause_starts_one_refresh_thread_at_most(queue_app, redis_url):
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    assert host in ("127.0.0.1", "localhost")
    proxy = PausableProxy(int(port))
    try:
        app = queue_app(REDIS_URL=redis_url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}"),
                        SEGAGENT_REDIS_TIMEOUT=3)
        client = app.test_client()
        assert client.get("/health").status_code == 200
        proxy.paused.set()
        for _ in range(20):
            client.get("/health")
            client.post("/setup", json={"project": "1.1", "schema": predict_body("", None)["label_config"]})
        checks = [t for t in threading.enumerate() if t.name == "version-check"]
        assert len(checks) <= 1, f"{len(checks)} refresh threads during a Redis pause"
    finally:
        proxy.paused.clear()
        proxy.close()
