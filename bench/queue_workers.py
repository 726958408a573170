"""Batch throughput of the queue with 1 worker against 2 workers on the same machine.

Starts real `segagent worker` processes (GrabCut only, one OpenCV/BLAS thread each) on a private queue
prefix of REDIS_URL (default redis://127.0.0.1:6379/0), first 1, then 2, and pushes the same N jobs
through the batch queue each time: one GrabCut click on a synthetic 1280x960 image served over local
HTTP per job (the click moves a little from job to job, so no job repeats another). Measures jobs/s from
the first enqueue to the last result and prints the 2-worker / 1-worker ratio. Figures are printed, not
asserted.

    .venv/bin/python -m bench.queue_workers [--jobs 60] [--max-side 512] [--json OUT]

``--max-side`` (SEGAGENT_GRABCUT_MAX_SIDE of the workers) sets how heavy one job is: short jobs measure
the queue and Redis sharing the cores with the workers, long ones the workers' compute.
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

import redis
from PIL import Image
from rq import Queue
from rq.serializers import JSONSerializer

from segagent_backend.queue import status
from segagent_backend.labelstudio.request import parse_predict
from segagent_backend.settings import Settings
from segagent_backend.queue.names import BATCH, QueueNames
from tests.conftest import make_disk_image
from tests.service.payloads import CONFIG, keypoint

from .common import record

REPO = Path(__file__).resolve().parents[1]

WIDTH, HEIGHT = 1280, 960
# one thread per worker: two workers on two cores must not fight over each other's thread pools
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "OPENCV_FOR_THREADS_NUM": "1"}


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def job_payload(image_url: str, i: int) -> dict:
    """One interactive GrabCut click on the disk; the click shifts by up to 4 % so jobs differ."""
    task = {"id": i + 1, "data": {"image": image_url}, "annotations": [], "predictions": []}
    click = keypoint(48 + (i % 5), 48 + (i // 5) % 5, WIDTH, HEIGHT)
    body = {"tasks": [task], "label_config": CONFIG, "params": {"context": {"result": [click]}}, "project": 3}
    return parse_predict(body, Settings.from_env({})).to_json()


def start_workers(n: int, url: str, prefix: str, tmp: Path, max_side: int) -> list[subprocess.Popen]:
    procs = []
    for k in range(n):
        env = {**os.environ, **ONE_THREAD, "REDIS_URL": url, "SEGAGENT_QUEUE_PREFIX": prefix,
               "MODEL_DIR": str(tmp / f"worker{k}"), "PYTHONPATH": str(REPO), "LOG_LEVEL": "WARNING",
               "SEGAGENT_SEGMENTER": "grabcut", "SEGAGENT_GRABCUT_MAX_SIDE": str(max_side)}
        procs.append(subprocess.Popen([sys.executable, "-m", "segagent_backend.cli", "worker"], cwd=REPO,
                                      env=env, start_new_session=True))
    conn = redis.Redis.from_url(url)
    while len([w for w in status.workers(conn, QueueNames(prefix)) if w.model == "ready"]) < n:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a worker did not start")
        time.sleep(0.1)
    return procs


def run_jobs(queue: Queue, payloads: list[dict]) -> float:
    """Enqueue all payloads at once, wait for every result; returns the wall time in seconds."""
    started = time.perf_counter()
    queued = [queue.enqueue("segagent_backend.queue.jobs.predict", p, result_ttl=120) for p in payloads]
    for job in queued:
        result = job.latest_result(timeout=300)
        assert result is not None and result.type == result.Type.SUCCESSFUL, result
        assert "result" in result.return_value[0], result.return_value
    return time.perf_counter() - started


def measure(n_workers: int, url: str, image_url: str, jobs: int, tmp: Path, max_side: int) -> float:
    """jobs/s of ``n_workers`` fresh workers on a fresh prefix, after one warm-up job per worker."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    conn = redis.Redis.from_url(url)
    procs = start_workers(n_workers, url, prefix, tmp / f"n{n_workers}", max_side)
    try:
        queue = Queue(QueueNames(prefix).queue(BATCH), connection=conn, serializer=JSONSerializer)
        # warm-up: each worker downloads and caches the image before the clock starts
        run_jobs(queue, [job_payload(image_url, i) for i in range(2 * n_workers)])
        seconds = run_jobs(queue, [job_payload(image_url, i) for i in range(jobs)])
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        for key in list(conn.scan_iter(f"rq:*{prefix}-*")) + list(conn.scan_iter(f"{prefix}:*")):
            conn.delete(key)
        conn.srem("rq:queues", *[f"rq:queue:{q}" for q in QueueNames(prefix).queues()])
    return jobs / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--max-side", type=int, default=512, help="SEGAGENT_GRABCUT_MAX_SIDE of the workers")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    tmp = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    disk = make_disk_image(WIDTH, HEIGHT, centre=(WIDTH // 2, HEIGHT // 2), radius=240)[0]
    Image.fromarray(disk).save(tmp / "disk.png")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    image_url = f"http://127.0.0.1:{server.server_address[1]}/disk.png"
    try:
        rates = {n: measure(n, url, image_url, args.jobs, tmp, args.max_side) for n in (1, 2)}
    finally:
        server.shutdown()
    figures = {"jobs": args.jobs, "max_side": args.max_side, "cpus": os.cpu_count(), "jobs_per_s_1_worker": round(rates[1], 2),
               "jobs_per_s_2_workers": round(rates[2], 2), "ratio": round(rates[2] / rates[1], 2)}
    print(f"{args.jobs} GrabCut click jobs (max side {args.max_side}) through the batch queue ({figures['cpus']} CPUs):")
    print(f"1 worker:  {figures['jobs_per_s_1_worker']} jobs/s")
    print(f"2 workers: {figures['jobs_per_s_2_workers']} jobs/s")
    print(f"2 / 1:     {figures['ratio']}x")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    record("queue_workers", {k: figures[k] for k in ("jobs_per_s_1_worker", "jobs_per_s_2_workers", "ratio")},
           setup={**vars(args), "cpus": figures["cpus"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
