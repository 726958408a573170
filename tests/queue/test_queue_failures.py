"""Failure handling through the queue: deadlines, timeouts, transient retries, a killed worker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import redis

from segagent_backend.queue import status
from segagent_backend.queue.names import QueueNames
from tests.service.payloads import keypoint, predict_body

CLICK = [keypoint(50, 50, 160, 120)]


def test_no_worker_means_a_per_task_error_at_the_deadline(queue_app, queue_env):
    client = queue_app(SEGAGENT_INTERACTIVE_DEADLINE=1).test_client()
    started = time.monotonic()
    reply = client.post("/predict", json=predict_body("http://127.0.0.1:9/x.png", CLICK))
    assert time.monotonic() - started < 3
    assert reply.status_code == 504 and reply.is_json
    (result,) = reply.json["results"]
    assert "result" not in result and result["status"] == 504
    assert "SEGAGENT_INTERACTIVE_DEADLINE=1" in result["error"] and "segagent worker" in result["error"]
    # the job nobody will read was cancelled, not left for a worker to run late
    conn = redis.Redis.from_url(queue_env["REDIS_URL"])
    assert status.snapshot(conn, QueueNames(queue_env["SEGAGENT_QUEUE_PREFIX"])).queues[0].queued == 0


def test_slow_job_past_the_deadline_gets_an_error_not_an_empty_prediction(queue_app, workers, slow_media):
    workers.start(1)
    client = queue_app(SEGAGENT_INTERACTIVE_DEADLINE=1).test_client()
    reply = client.post("/predict", json=predict_body(f"{slow_media}/slow/3/disk.png", CLICK))
    assert reply.status_code == 504
    assert "result" not in reply.json["results"][0] and "was started" in reply.json["results"][0]["error"]


def test_job_timeout_is_a_visible_failure_with_its_reason(queue_app, workers, queue_env, slow_media):
    workers.start(1)
    client = queue_app(SEGAGENT_JOB_TIMEOUT=1, SEGAGENT_JOB_RETRIES=0).test_client()
    reply = client.post("/predict", json=predict_body(f"{slow_media}/slow/3/disk.png", CLICK))
    assert reply.status_code == 500
    assert "JobTimeout: Task exceeded maximum timeout value (1 seconds)" in reply.json["results"][0]["error"]
    env = {**os.environ, **queue_env}
    listing = subprocess.run([sys.executable, "-m", "segagent_backend.cli", "jobs", "--json"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    failed = json.loads(listing.stdout)["failed"]
    assert len(failed) == 1 and "JobTimeout" in failed[0]["reason"]
    assert failed[0]["queue"].endswith("-interactive")


def test_unreachable_image_host_is_retried_with_backoff(queue_app, workers, slow_media):
    workers.start(1, SEGAGENT_RETRY_BACKOFF=0.2, SEGAGENT_TRANSIENT_RETRIES=2)
    client = queue_app().test_client()
    key = uuid.uuid4().hex
    reply = client.post("/predict", json=predict_body(f"{slow_media}/flaky/2/{key}/disk.png", CLICK))
    assert reply.status_code == 200, reply.json  # two 502s, then the image
    reply = client.post("/predict", json=predict_body(f"{slow_media}/flaky/5/{key}x/disk.png", CLICK))
    assert reply.status_code == 502 and "could not be fetched" in reply.json["error"]  # retries are bounded


def test_a_job_survives_its_worker_being_killed(queue_app, workers, queue_env, slow_media):
    """Two real workers; SIGKILL the one running a slow job: the job completes on the other one."""
    first, second = workers.start(2)
    client = queue_app().test_client()
    replies = []
    body = predict_body(f"{slow_media}/slow/2/disk.png", CLICK)
    thread = threading.Thread(target=lambda: replies.append(client.post("/predict", json=body)))
    thread.start()
    conn = redis.Redis.from_url(queue_env["REDIS_URL"])
    names = QueueNames(queue_env["SEGAGENT_QUEUE_PREFIX"])
    busy = None
    for _ in range(100):  # wait until a worker reports the job as its current one
        busy = next((w for w in status.workers(conn, names) if w.current_job), None)
        if busy:
            break
        time.sleep(0.05)
    assert busy is not None, workers.logs()
    victim = first if busy.pid == first.pid else second
    survivor = second if victim is first else first
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    thread.join(timeout=30)
    assert replies and replies[0].status_code == 200, (replies and replies[0].json, workers.logs())
    assert replies[0].json["results"][0]["result"][0]["type"] == "brushlabels"
    for _ in range(40):  # health is published every half heartbeat
        alive = status.workers(conn, names)
        if len(alive) == 1 and alive[0].jobs_done >= 1:
            break
        time.sleep(0.1)
    # the click failover and RQ's lease may both re-queue the click: the second copy finds the stored
    # answer and returns it without running, but counts as a job done
    assert [w.pid for w in alive] == [survivor.pid] and alive[0].jobs_done in (1, 2)


def test_bad_input_is_refused_before_queueing(queue_app, queue_env):
    client = queue_app().test_client()
    body = predict_body("http://127.0.0.1:9/x.png", CLICK)
    body["label_config"] = "<View><Text name='t' value='$t'/></View>"
    reply = client.post("/predict", json=body)
    assert reply.status_code == 400 and "Image" in reply.json["error"]
    conn = redis.Redis.from_url(queue_env["REDIS_URL"])
    assert all(q.queued == 0 for q in status.snapshot(conn, QueueNames(queue_env["SEGAGENT_QUEUE_PREFIX"])).queues)
