"""A personal access token (PAT) as the backend's LABEL_STUDIO_API_KEY, against a real Label Studio 1.23.

Label Studio 1.23 issues PATs by default: JWT refresh tokens it refuses as ``Bearer <PAT>``. The backend
exchanges one at ``/api/token/refresh/`` for access tokens, for the images it downloads (an interactive
click relayed by Label Studio) and for its SDK calls (``segagent preannotate`` and the worker that posts
the predictions). The PAT is made through Label Studio's API and revoked afterwards (one per user).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import requests

from segagent_backend.labelstudio.client import label_studio as sdk_client
from segagent_backend.settings import Settings
from servers import REPO, assert_click_covers_the_disk, disk_project, serve_backend, stop



@pytest.fixture(scope="module")
def pat_backend(label_studio, pat, tmp_path_factory):
    """The backend with the default tools and the PAT as LABEL_STUDIO_API_KEY."""
    url, proc = serve_backend((label_studio[0], pat), tmp_path_factory.mktemp("models"))
    yield url
    stop(proc)


def pat_sdk(label_studio, pat, tmp_path):
    """The backend's own SDK client, with the PAT as its key."""
    return sdk_client(Settings.from_env({"LABEL_STUDIO_URL": label_studio[0], "LABEL_STUDIO_API_KEY": pat,
                                         "MODEL_DIR": str(tmp_path / "models")}))


def test_label_studio_takes_a_pat_only_after_its_exchange(label_studio, pat):
    """What the backend works around: ``Bearer <PAT>`` is refused, ``Bearer <its access token>`` taken."""
    url, _ = label_studio
    refused = requests.get(f"{url}/api/projects", headers={"Authorization": f"Bearer {pat}"}, timeout=30)
    assert refused.status_code == 401
    exchanged = requests.post(f"{url}/api/token/refresh/", json={"refresh": pat}, timeout=30)
    assert exchanged.status_code == 200, exchanged.text[:500]
    access = exchanged.json()["access"]
    assert requests.get(f"{url}/api/projects", headers={"Authorization": f"Bearer {access}"}, timeout=30).ok


def test_interactive_click_downloads_the_image_with_a_pat(label_studio, pat, pat_backend, files_root, disk_image,
                                                          tmp_path):
    """Label Studio relays a smart click; the backend downloads the local-files image from Label Studio with
    an access token of its PAT (``Bearer <PAT>`` got 401, and the click a 502) and answers a mask."""
    ls = pat_sdk(label_studio, pat, tmp_path)  # project, storage, task and connection: SDK calls with the PAT
    project, (task,) = disk_project(ls, files_root, "segagent e2e pat")
    ml = ls.ml.create(url=pat_backend, project=project.id, is_interactive=True, title="segagent")
    assert ls.ml.get(id=ml.id).state == "CO"
    assert_click_covers_the_disk(label_studio, ml.id, task, disk_image[1])


def test_preannotate_with_a_pat(label_studio, pat, files_root, redis_url, tmp_path, tiny_qwen2_vl):
    """`segagent preannotate` lists the project's tasks and a burst worker downloads their images and posts
    its predictions, all with the PAT as LABEL_STUDIO_API_KEY."""
    import redis

    ls = pat_sdk(label_studio, pat, tmp_path)
    project, ids = disk_project(ls, files_root, "segagent e2e pat preannotate", tasks=2)
    prefix = f"e2epat{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "REDIS_URL": redis_url, "SEGAGENT_QUEUE_PREFIX": prefix, "LABEL_STUDIO_URL": label_studio[0],
           "LABEL_STUDIO_API_KEY": pat, "SEGAGENT_MAX_STEPS": "2", "SEGAGENT_POLICY": str(tiny_qwen2_vl),
           "MODEL_DIR": str(tmp_path / "models"), "PYTHONPATH": str(REPO)}

    def segagent(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "segagent_backend.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        assert pat not in done.stdout + done.stderr  # the token is never printed or logged
        return done.stdout

    try:
        plan = json.loads(segagent("preannotate", "--project", str(project.id), "--no-wait"))
        assert plan["queued"] == ids, plan
        segagent("worker", "--burst", "--queues", "batch")
        for task_id in ids:
            (prediction,) = ls.predictions.list(task=task_id)
            assert prediction.model_version == plan["model_version"]
            assert [r["type"] for r in prediction.result][0] == "brushlabels"
    finally:
        conn = redis.Redis.from_url(redis_url)
        for key in list(conn.scan_iter(f"rq:*{prefix}-*")) + list(conn.scan_iter(f"{prefix}:*")):
            conn.delete(key)
        conn.srem("rq:queues", *[f"rq:queue:{prefix}-{kind}" for kind in ("interactive", "batch", "train")])
