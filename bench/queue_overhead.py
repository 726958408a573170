"""What the Redis queue costs: a no-op job's enqueue-to-result time, and a click through the queue
against the same click in-process.

Starts one real `segagent worker` on a private queue prefix of REDIS_URL (default
redis://127.0.0.1:6379/0), then measures
- p50/p95 of enqueue -> result for a no-op job (RQ + Redis + the worker's loop, nothing else);
- p50/p95 of an interactive /predict (one GrabCut click on a synthetic image served over local HTTP)
  through the queue (Flask app in queue mode + worker) and in-process (embedded mode), and their ratio.
Figures are printed, not asserted.

    .venv/bin/python -m bench.queue_overhead [--jobs 200] [--clicks 50] [--json OUT]
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import redis
from PIL import Image
from rq import Queue
from rq.serializers import JSONSerializer

from segagent_backend.app import create_app
from segagent_backend.queue import status
from segagent_backend.queue.dispatch import QueueDispatcher
from segagent_backend.queue.names import QueueNames
from segagent_backend.settings import Settings
from tests.conftest import make_disk_image
from tests.service.payloads import keypoint, predict_body

from .common import record

REPO = Path(__file__).resolve().parents[1]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "n": len(seconds)}


def noop_latency(conn: redis.Redis, prefix: str, n: int) -> list[float]:
    """Enqueue a no-op, block on its result stream (as the web process does), n times in a row."""
    queue = Queue(f"{prefix}-interactive", connection=conn, serializer=JSONSerializer)
    times = []
    for i in range(n):
        started = time.perf_counter()
        job = queue.enqueue("segagent_backend.queue.jobs.noop", {"i": i}, result_ttl=60)
        result = job.latest_result(timeout=10)
        assert result is not None and result.return_value == {"i": i}, result
        times.append(time.perf_counter() - started)
    return times


def click_latency(client, body: dict, n: int) -> list[float]:
    assert client.post("/predict", json=body).status_code == 200  # downloads and caches the image
    times = []
    for _ in range(n):
        started = time.perf_counter()
        reply = client.post("/predict", json=body)
        times.append(time.perf_counter() - started)
        assert reply.status_code == 200, reply.json
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    Image.fromarray(make_disk_image()[0]).save(tmp / "disk.png")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    body = predict_body(f"http://127.0.0.1:{server.server_address[1]}/disk.png", [keypoint(50, 50, 160, 120)])

    # the loopback image server must pass the media policy (the web app and the worker both fetch it)
    media = {"SEGAGENT_MEDIA_ALLOW_HOSTS": f"127.0.0.1:{server.server_address[1]}",
             "SEGAGENT_MEDIA_ALLOW_PRIVATE": "true"}
    env = {**os.environ, **media, "REDIS_URL": url, "SEGAGENT_QUEUE_PREFIX": prefix, "MODEL_DIR": str(tmp / "worker"),
           "PYTHONPATH": str(REPO), "LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "-m", "segagent_backend.cli", "worker"], cwd=REPO, env=env,
                              start_new_session=True)
    conn = redis.Redis.from_url(url)
    try:
        while not status.workers(conn, QueueNames(prefix)):
            if worker.poll() is not None:
                raise SystemExit("the worker did not start")
            time.sleep(0.1)
        noop = noop_latency(conn, prefix, args.jobs)
        base = {"MODEL_DIR": str(tmp / "web"), "SEGAGENT_PRELOAD": "false", "LOG_LEVEL": "WARNING", **media}
        queued_app = create_app(Settings.from_env({**base, "REDIS_URL": url, "SEGAGENT_QUEUE_PREFIX": prefix}))
        assert isinstance(queued_app.config["SEGAGENT_DISPATCHER"], QueueDispatcher)
        queued = click_latency(queued_app.test_client(), body, args.clicks)
        inline = click_latency(create_app(Settings.from_env(base)).test_client(), body, args.clicks)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        server.shutdown()
        for key in list(conn.scan_iter(f"rq:*{prefix}-*")) + list(conn.scan_iter(f"{prefix}:*")):
            conn.delete(key)
        conn.srem("rq:queues", *[f"rq:queue:{q}" for q in QueueNames(prefix).queues()])
    figures = {"noop_job": percentiles(noop), "click_through_queue": percentiles(queued),
               "click_in_process": percentiles(inline)}
    figures["click_ratio_p50"] = round(figures["click_through_queue"]["p50_ms"] / figures["click_in_process"]["p50_ms"], 2)
    print(f"no-op job, enqueue -> result: p50 {figures['noop_job']['p50_ms']} ms, p95 {figures['noop_job']['p95_ms']} ms "
          f"({args.jobs} jobs)")
    print(f"click through the queue:      p50 {figures['click_through_queue']['p50_ms']} ms, "
          f"p95 {figures['click_through_queue']['p95_ms']} ms")
    print(f"click in-process:             p50 {figures['click_in_process']['p50_ms']} ms, "
          f"p95 {figures['click_in_process']['p95_ms']} ms")
    print(f"queue / in-process (p50):     {figures['click_ratio_p50']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    latency = {k: figures[k] for k in ("noop_job", "click_through_queue", "click_in_process")}
    record("queue_overhead", {"latency": latency,
                              "queue / in-process click (p50)": figures["click_ratio_p50"]}, setup=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
