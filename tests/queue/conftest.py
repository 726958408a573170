"""Fixtures of the queue tests: a key prefix per test on the shared Redis, real `segagent worker`
subprocesses, and an image server that answers slowly (a real slow job for the worker to run)."""
from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[2]


class SlowHandler(http.server.SimpleHTTPRequestHandler):
    """``/slow/<seconds>/<file>`` serves ``<file>`` after sleeping: a slow image host.
    ``/flaky/<n>/<key>/<file>``: the first ``n`` requests for ``key`` get HTTP 502, then the file."""

    failures: dict = {}
    lock = threading.Lock()

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) >= 4 and parts[1] == "slow":
            time.sleep(float(parts[2]))
            self.path = "/" + "/".join(parts[3:])
        elif len(parts) >= 5 and parts[1] == "flaky":
            with self.lock:
                seen = self.failures.get(parts[3], 0)
                self.failures[parts[3]] = seen + 1
            if seen < int(parts[2]):
                self.send_error(502, "the image host is overloaded")
                return
            self.path = "/" + "/".join(parts[4:])
        super().do_GET()

    def copyfile(self, source, outputfile):
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (deadline, killed worker)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def slow_media(media_dir):
    handler = functools.partial(SlowHandler, directory=str(media_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def prefix(redis_url):
    """A queue prefix of this test alone; its keys and jobs are deleted afterwards."""
    import redis

    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    conn = redis.Redis.from_url(redis_url)
    job_ids = set()
    for key in conn.scan_iter(f"rq:*{name}-*"):
        kind = conn.type(key)
        if kind == b"zset":
            job_ids |= {m.decode().split(":")[0] for m in conn.zrange(key, 0, -1)}
        elif kind == b"list":
            job_ids |= {m.decode() for m in conn.lrange(key, 0, -1)}
        conn.delete(key)
    for job_id in job_ids:
        conn.delete(f"rq:job:{job_id}", f"rq:results:{job_id}")
    for key in conn.scan_iter(f"{name}:*"):
        conn.delete(key)
    for queue in conn.smembers("rq:queues"):
        if queue.decode().startswith(f"rq:queue:{name}-"):
            conn.srem("rq:queues", queue)


@pytest.fixture
def queue_env(redis_url, prefix, tmp_path):
    """Environment of the web process and the workers of one test (fast heartbeats)."""
    return {"REDIS_URL": redis_url, "SEGAGENT_QUEUE_PREFIX": prefix, "SEGAGENT_WORKER_HEARTBEAT": "1",
            "MODEL_DIR": str(tmp_path / "models"), "SEGAGENT_PRELOAD": "false"}


class Workers:
    """Real `segagent worker` processes, each in its own session (a SIGKILL takes its whole group)."""

    def __init__(self, env: dict, tmp_path: Path):
        self.env, self.tmp_path, self.procs = env, tmp_path, []

    def start(self, n: int = 1, wait: bool = True, model_dir: Optional[Path] = None, **extra) -> list[subprocess.Popen]:
        """``n`` workers, each with a MODEL_DIR of its own unless ``model_dir`` (shared storage) is given."""
        started = []
        for _ in range(n):
            env = {**os.environ, **self.env, **{k: str(v) for k, v in extra.items()},
                   "MODEL_DIR": str(model_dir or self.tmp_path / f"worker{len(self.procs)}"), "PYTHONPATH": str(REPO)}
            log = open(self.tmp_path / f"worker{len(self.procs)}.log", "w")
            proc = subprocess.Popen([sys.executable, "-m", "segagent_backend.cli", "worker"], cwd=REPO, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            proc.log_path = log.name
            self.procs.append(proc)
            started.append(proc)
        if wait:
            self.wait_for(len([p for p in self.procs if p.poll() is None]))
        return started

    def wait_for(self, count: int, timeout: float = 60) -> None:
        import redis

        from segagent_backend.queue import status
        from segagent_backend.queue.names import QueueNames

        conn = redis.Redis.from_url(self.env["REDIS_URL"])
        names = QueueNames(self.env["SEGAGENT_QUEUE_PREFIX"])
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len([w for w in status.workers(conn, names) if w.model == "ready"]) >= count:
                return
            if any(p.poll() is not None for p in self.procs if p.returncode not in (None, -9)):
                break
            time.sleep(0.1)
        pytest.fail(f"{count} worker(s) did not come up:\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path}\n" + Path(p.log_path).read_text()[-3000:] for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=3)  # a warm shutdown waits for the job: do not wait for slow ones
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(queue_env, tmp_path):
    pool = Workers(queue_env, tmp_path)
    yield pool
    pool.stop()


@pytest.fixture
def queue_app(queue_env, make_settings):
    """The web app in queue mode (loads no model)."""
    from segagent_backend.app import create_app

    def make(**env):
        return create_app(make_settings(**{**queue_env, **env}))

    return make
