"""Slow clients against the real gunicorn of ``segagent serve``: connections that send half a request's
headers (or a body slowly) hold no thread, so /health keeps answering within Label Studio's second.

The same attack against plain gthread (what `segagent serve` ran before) takes every thread: that control
shows the test reproduces it. Everything listens on 127.0.0.1 and every wait is bounded.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from segagent_backend.buffering_worker import request_complete
from segagent_backend.cli.serve import LIGHT_THREADS, gunicorn_argv
from segagent_backend.settings import Settings

REPO = Path(__file__).resolve().parents[2]
AUTH = ("ls", "pw")
SLOW_CLIENTS = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp_path: Path, worker_class: str | None = None):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(PORT=str(port), MODEL_DIR=str(tmp_path / "models"), WORKERS="1", THREADS="1",
               SEGAGENT_PRELOAD="false", BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1], PYTHONPATH=str(REPO))
    argv = gunicorn_argv(Settings.from_env(env), "127.0.0.1", port)
    if worker_class:
        argv[argv.index("--worker-class") + 1] = worker_class
    log = open(tmp_path / "gunicorn.log", "w")
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", auth=AUTH, timeout=2).status_code == 200:
                return proc, port
        except requests.RequestException:
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("gunicorn did not come up:\n" + (tmp_path / "gunicorn.log").read_text()[-3000:])


def stop(proc) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def slow_clients(port: int) -> list[socket.socket]:
    """SLOW_CLIENTS connections: a third send half their headers, a third whole headers and a tenth of the
    body, a third a whole request that closes the connection, and never read the answer nor close."""
    held = []
    for i in range(SLOW_CLIENTS):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 3 == 1:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic bHM6cHc=\r\n"
                      b"Connection: close\r\n\r\n")
        elif i % 3 == 2:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        else:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"tasks\": [")
        held.append(s)
    time.sleep(0.5)  # gthread has handed each to a thread by now
    return held


def health_answers(port: int, timeout: float = 1.0) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", auth=AUTH, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def test_serve_uses_the_buffering_worker(make_settings):
    argv = gunicorn_argv(make_settings(THREADS="1"), "127.0.0.1", 9999)
    assert argv[argv.index("--worker-class") + 1] == "segagent_backend.buffering_worker.BufferingThreadWorker"
    assert argv[argv.index("--threads") + 1] == str(1 + LIGHT_THREADS)


def test_health_answers_while_slow_clients_hold_connections(tmp_path):
    proc, port = serve(tmp_path)
    try:
        held = slow_clients(port)
        for _ in range(5):
            started = time.monotonic()
            assert health_answers(port), (tmp_path / "gunicorn.log").read_text()[-3000:]
            assert time.monotonic() - started < 1.0
        # a request that arrives in pieces is still answered whole: headers in three parts, then a body
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            body = b"{not json"
            parts = [b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                     b"Authorization: Basic bHM6cHc=\r\nContent-Type: application/json\r\n",
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n{not" % len(body), b" json"]
            for part in parts:
                s.sendall(part)
                time.sleep(0.2)
                assert health_answers(port)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
        # kept-alive connections go through the same reading
        with requests.Session() as session:
            for _ in range(3):
                assert session.get(f"http://127.0.0.1:{port}/health", auth=AUTH, timeout=2).status_code == 200
        # headers that never end are answered 431 once over the limit, not read forever
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (80 * 1024))
            assert s.recv(100).startswith(b"HTTP/1.1 431")
        for s in held:
            s.close()
    finally:
        stop(proc)


def test_plain_gthread_is_held_by_the_same_slow_clients(tmp_path):
    """The control: the attack against gthread leaves no thread for /health."""
    proc, port = serve(tmp_path, worker_class="gthread")
    try:
        held = slow_clients(port)
        assert not health_answers(port, timeout=1.5)
        for s in held:
            s.close()
    finally:
        stop(proc)


@pytest.mark.parametrize("data, expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", None),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nab", None),
    (b"POST / HTTP/1.1\r\nContent-Length:4\r\n\r\nabcd", True),
    (b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", True),  # over the body limit: the app's 413
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, False),
])
def test_request_complete(data, expected):
    assert request_complete(data, 1024) is expected
