"""Batch commands count tasks, not jobs, against a real Label Studio 1.23 and a real `segagent worker`.

`segagent preannotate` (and `segagent refine`) follow their jobs while a burst worker runs them; every
task a job could not write counts as failed with its reason, the summary names the first reasons, the
command exits nonzero and Label Studio holds nothing for those tasks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import redis
from label_studio_sdk import LabelStudio
from rq import Queue

from servers import REPO, disk_project


@pytest.fixture
def queue_project(label_studio, files_root, redis_url, tmp_path):
    """(Label Studio client, project, task ids, the commands' environment: no policy, no text model)."""
    url, token = label_studio
    ls = LabelStudio(base_url=url, api_key=token)
    project, ids = disk_project(ls, files_root, "segagent batch outcomes", tasks=3)
    prefix = f"e2eout{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGAGENT_")}
    env |= {"REDIS_URL": redis_url, "SEGAGENT_QUEUE_PREFIX": prefix, "LABEL_STUDIO_URL": url,
            "LABEL_STUDIO_API_KEY": token, "SEGAGENT_BATCH_CHUNK": "2", "MODEL_DIR": str(tmp_path / "models"),
            "PYTHONPATH": str(REPO)}
    yield ls, project, ids, env
    conn = redis.Redis.from_url(redis_url)
    for key in list(conn.scan_iter(f"rq:*{prefix}-*")) + list(conn.scan_iter(f"{prefix}:*")):
        conn.delete(key)
    conn.srem("rq:queues", *[f"rq:queue:{prefix}-{kind}" for kind in ("interactive", "batch", "train")])


def run_with_worker(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`segagent ARGS` (which queues jobs and follows them), with a burst worker started once they are queued."""
    command = subprocess.Popen([sys.executable, "-m", "segagent_backend.cli", *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        queue = Queue(f"{env['SEGAGENT_QUEUE_PREFIX']}-batch", connection=redis.Redis.from_url(env["REDIS_URL"]))
        deadline = time.monotonic() + 60
        while not queue.count and command.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        worker = subprocess.run([sys.executable, "-m", "segagent_backend.cli", "worker", "--burst", "--queues", "batch"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stderr[-3000:]
        out, err = command.communicate(timeout=60)
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
    return subprocess.CompletedProcess(command.args, command.returncode, out, err)


def test_preannotate_without_a_policy_counts_every_task_failed_with_its_reason(queue_project):
    ls, project, ids, env = queue_project
    done = run_with_worker(env, "preannotate", "--project", str(project.id))
    summary = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr[-3000:]
    assert summary["queued"] == ids and summary["jobs"] == 2
    assert (summary["tasks_written"], summary["tasks_skipped"], summary["tasks_failed"]) == (0, 0, 3)
    assert [f["task"] for f in summary["failures"]] == ids
    for failure in summary["failures"]:
        assert "SEGAGENT_POLICY" in failure["reason"] and "SEGAGENT_TEXT_MODEL" in failure["reason"]
    # one line on standard error (beside the bar's) naming the count and the first reason
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("segagent preannotate:")]
    assert "3 of 3 task(s) failed" in line and f"task {ids[0]}: automatic predictions need" in line
    assert all(not ls.predictions.list(task=task_id) for task_id in ids)  # Label Studio holds nothing


def test_refine_of_tasks_without_a_brush_mask_counts_them_failed(queue_project):
    ls, project, ids, env = queue_project
    done = run_with_worker(env, "refine", "--project", str(project.id))
    summary = json.loads(done.stdout)
    assert done.returncode == 1, done.stderr[-3000:]
    assert summary["tasks_failed"] == 3 and summary["tasks_written"] == 0
    assert all("no brush mask in the task's predictions" in f["reason"] for f in summary["failures"])
    assert any(x.startswith("segagent refine: 3 of 3 task(s) failed") for x in done.stderr.splitlines())
    assert all(not ls.predictions.list(task=task_id) for task_id in ids)
