"""Real servers for the end-to-end tests: a hermetic Label Studio 1.23 and the backend under gunicorn."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
# the label config of the API-level end-to-end projects (the browser test uses the README's)
CONFIG = (
    '<View><Image name="image" value="$image"/><Text name="expression" value="$expression"/>'
    '<BrushLabels name="mask" toName="image"><Label value="Disk"/></BrushLabels>'
    '<KeyPointLabels name="click" toName="image" smart="true"><Label value="Disk" smart="true"/></KeyPointLabels>'
    '<KeyPointLabels name="trajectory" toName="image"><Label value="positive"/><Label value="negative"/></KeyPointLabels>'
    '</View>'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """A server process whose output goes to ``log``: a pipe nobody reads fills up after some hundred
    requests' log lines and then blocks the server (a browser makes that many in a minute)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    proc.log = log
    return proc


def log_tail(proc: subprocess.Popen, chars: int = 4000) -> str:
    return Path(proc.log).read_text(errors="replace")[-chars:]


def wait_for(url: str, proc: subprocess.Popen, seconds: float, ok=lambda r: r.status_code == 200, **kwargs) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited:\n{log_tail(proc)}")
        try:
            if ok(requests.get(url, timeout=3, **kwargs)):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{url} did not come up in {seconds} s:\n{log_tail(proc)}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_label_studio(label_studio_bin: str, files_root: Path, data_dir: Path):
    """A fresh, hermetic Label Studio server on a free loopback port: ((base URL, legacy API token), process)."""
    port, token = free_port(), secrets.token_hex(20)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS", "LABEL_STUDIO"))}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), LABEL_STUDIO_USERNAME="e2e@example.com",
        LABEL_STUDIO_PASSWORD="e2e-password", LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files_root), ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false", LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        # hermetic: no PyPI version check, no Sentry (server or frontend), no analytics
        LATEST_VERSION_CHECK="false", SENTRY_DSN="", FRONTEND_SENTRY_DSN="", COLLECT_ANALYTICS="false",
    )
    proc = launch([label_studio_bin, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
                   "--data-dir", str(data_dir), "--enable-legacy-api-token"],
                  data_dir / "label-studio.log", env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/api/projects", proc, 240, headers={"Authorization": f"Token {token}"})
    return (url, token), proc


def serve_backend(label_studio, model_dir: Path, **settings):
    """Start the backend under gunicorn, told where Label Studio is; (url, process)."""
    url, token = label_studio
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(MODEL_DIR=str(model_dir), LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY=token, WORKERS="1",
               THREADS="4", **settings)
    proc = launch([str(Path(sys.executable).with_name("gunicorn")), "--bind", f"127.0.0.1:{port}", "--workers", "1",
                   "--threads", "4", "--worker-class", "gthread", "_wsgi:app"],
                  Path(model_dir) / "backend.log", cwd=REPO, env=env)
    backend_url = f"http://127.0.0.1:{port}"
    wait_for(f"{backend_url}/health", proc, 90, ok=lambda r: r.json()["model"] == "ready")
    return backend_url, proc



DISK_TASK = {"image": "/data/local-files/?d=images/disk.png", "expression": "the red disk"}


def disk_project(ls, files_root: Path, title: str, tasks: int = 1):
    """A project with CONFIG, local-files storage on ``files_root/images`` and ``tasks`` tasks of the disk
    image (made with the SDK client ``ls``): (project, task ids)."""
    project = ls.projects.create(title=title, label_config=CONFIG)
    ls.import_storage.local.create(project=project.id, path=str(files_root / "images"), use_blob_urls=True)
    return project, [ls.tasks.create(project=project.id, data=DISK_TASK).id for _ in range(tasks)]


def assert_click_covers_the_disk(label_studio, ml_id: int, task_id: int, truth) -> None:
    """A positive smart click at the image's centre, relayed by Label Studio's interactive API as its screen
    sends it: the answer is one brush region covering the disk (``truth``: (H, W) bool) at IoU > 0.85."""
    from label_studio_sdk.converter.brush import decode_rle

    url, token = label_studio
    click = {"original_width": 160, "original_height": 120, "image_rotation": 0, "id": "c1",
             "from_name": "click", "to_name": "image", "type": "keypointlabels", "origin": "manual",
             "is_positive": True, "value": {"x": 50.0, "y": 50.0, "width": 0.3, "keypointlabels": ["Disk"]}}
    reply = requests.post(f"{url}/api/ml/{ml_id}/interactive-annotating", timeout=60,
                          headers={"Authorization": f"Token {token}"},
                          json={"task": task_id, "context": {"result": [click]}})
    assert reply.status_code == 200 and "errors" not in reply.json(), reply.text[:2000]
    (region,) = reply.json()["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Disk"]
    mask = decode_rle(region["value"]["rle"]).reshape(120, 160, 4)[:, :, 3] > 127
    assert (mask & truth).sum() / (mask | truth).sum() > 0.85
