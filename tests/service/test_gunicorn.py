"""The served app: gunicorn (as `make run` starts it) answering real HTTP on a free port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle

from payloads import keypoint, predict_body

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, media_server):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(PORT=str(port), MODEL_DIR=str(tmp_path_factory.mktemp("models")), WORKERS="2", THREADS="2",
               BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw",
               # the test images come from a loopback server: allowed by name, private address included
               SEGAGENT_MEDIA_ALLOW_HOSTS=media_server.removeprefix("http://"), SEGAGENT_MEDIA_ALLOW_PRIVATE="true")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "2",
         "--worker-class", "gthread", "_wsgi:app"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", auth=("ls", "pw"), timeout=2).json()["model"] == "ready":
                break
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("gunicorn did not come up:\n" + proc.communicate()[0][-3000:])
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def test_health_and_auth_over_http(server):
    assert requests.get(f"{server}/health", timeout=5).status_code == 401
    reply = requests.get(f"{server}/health", auth=("ls", "pw"), timeout=5)
    assert reply.status_code == 200 and reply.json()["status"] == "UP"


def test_interactive_predict_over_http(server, media_server, disk_image):
    _, truth = disk_image
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)])
    for _ in range(4):  # several requests: both workers answer the same way
        reply = requests.post(f"{server}/predict", json=body, auth=("ls", "pw"), timeout=30)
        assert reply.status_code == 200, reply.text
        region = reply.json()["results"][0]["result"][0]
        mask = decode_rle(region["value"]["rle"]).reshape(120, 160, 4)[:, :, 3] > 127
        assert (mask & truth).sum() / (mask | truth).sum() > 0.85


def test_errors_are_json_over_http(server):
    reply = requests.post(f"{server}/predict", data="{", headers={"Content-Type": "application/json"},
                          auth=("ls", "pw"), timeout=5)
    assert reply.status_code == 400 and reply.headers["Content-Type"].startswith("application/json")


def test_metrics_over_http(server):
    reply = requests.get(f"{server}/metrics", auth=("ls", "pw"), timeout=5)
    assert reply.status_code == 200 and "segagent_http_requests_total" in reply.text
