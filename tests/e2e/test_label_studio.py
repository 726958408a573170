"""End to end against a real Label Studio 1.23 server and the backend served by gunicorn.

Label Studio connects to the backend (/health, /setup), relays an annotator's smart click through its
own interactive-annotating API to /predict (the image is a Label Studio local-storage file the backend
downloads with the API token), stores nothing for automatic predictions the backend cannot make, and
sends START_TRAINING to /webhook. `make test` installs the server into .venv-ls (LABEL_STUDIO_BIN).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from servers import CONFIG, REPO, DISK_TASK, assert_click_covers_the_disk, disk_project, serve_backend, stop



@pytest.fixture(scope="module")
def policy_backend(label_studio, tmp_path_factory, tiny_qwen2_vl):
    """The backend with a SegAgent policy (a tiny random Qwen2-VL saved like a real checkpoint)."""
    folder = tiny_qwen2_vl
    url, proc = serve_backend(label_studio, tmp_path_factory.mktemp("models"), SEGAGENT_POLICY=str(folder),
                              SEGAGENT_MAX_STEPS="3")
    yield url
    stop(proc)


def make_project(label_studio, backend_url: str, files_root: Path, title: str):
    url, token = label_studio
    ls = LabelStudio(base_url=url, api_key=token)
    project = ls.projects.create(title=title, label_config=CONFIG)
    ls.import_storage.local.create(project=project.id, path=str(files_root / "images"), use_blob_urls=True)
    task = ls.tasks.create(project=project.id, data=DISK_TASK)
    ml = ls.ml.create(url=backend_url, project=project.id, is_interactive=True, title="segagent")
    return ls, project, task, ml


@pytest.fixture(scope="module")
def project(label_studio, backend, files_root):
    return make_project(label_studio, backend, files_root, "segagent e2e")


def test_label_studio_connects_to_the_backend(project):
    ls, _, _, ml = project
    backend = ls.ml.get(id=ml.id)
    assert backend.state == "CO", (backend.state, backend.error_message)
    assert backend.model_version.startswith("segagent-grabcut")


def test_interactive_click_through_label_studio(project, label_studio, disk_image):
    _, _, task, ml = project
    assert_click_covers_the_disk(label_studio, ml.id, task.id, disk_image[1])


def test_automatic_predictions_store_nothing_without_a_policy(project, backend):
    ls, proj, task, _ = project
    ls.actions.create(id="retrieve_tasks_predictions", project=proj.id, selected_items={"all": True, "excluded": []})
    metrics = requests.get(f"{backend}/metrics", timeout=5).text
    assert 'segagent_predictions_total{outcome="error"} 1.0' in metrics, "Label Studio must have asked /predict"
    assert list(ls.predictions.list(task=task.id)) == []


def test_start_training_reaches_the_webhook(project, backend):
    ls, _, _, ml = project
    ls.ml.train(id=ml.id)
    metrics = requests.get(f"{backend}/metrics", timeout=5).text
    assert 'segagent_webhooks_total{action="START_TRAINING"} 1.0' in metrics


def test_automatic_predictions_with_a_policy_are_stored_with_their_trajectory(label_studio, policy_backend, files_root):
    ls, proj, task, ml = make_project(label_studio, policy_backend, files_root, "segagent e2e policy")
    version = requests.get(f"{policy_backend}/health", timeout=5).json()["model_version"]
    assert ls.ml.get(id=ml.id).state == "CO"
    ls.actions.create(id="retrieve_tasks_predictions", project=proj.id, selected_items={"all": True, "excluded": []})
    (prediction,) = list(ls.predictions.list(task=task.id))
    assert prediction.model_version == version and 0.0 <= prediction.score <= 1.0
    brush = [r for r in prediction.result if r["type"] == "brushlabels"]
    clicks = [r for r in prediction.result if r["type"] == "keypointlabels"]
    assert len(brush) == 1 and all(c["from_name"] == "trajectory" for c in clicks)
    mask = decode_rle(brush[0]["value"]["rle"]).reshape(120, 160, 4)[:, :, 3]
    assert mask.shape == (120, 160)
    # a second retrieval skips the task: its prediction is of the current model version
    ls.actions.create(id="retrieve_tasks_predictions", project=proj.id, selected_items={"all": True, "excluded": []})
    assert len(list(ls.predictions.list(task=task.id))) == 1


def test_text_alone_pre_annotates_a_project(label_studio, files_root, tmp_path, tiny_sam3_text):
    """SEGAGENT_TEXT_MODEL without a policy: Label Studio stores SAM 3's mask, named as SAM 3's, with its score;
    a task whose expression SAM 3 cannot ground gets nothing stored."""
    backend_url, proc = serve_backend(label_studio, tmp_path / "models", SEGAGENT_TEXT_MODEL=str(tiny_sam3_text),
                                      SEGAGENT_TEXT_THRESHOLD="0")
    try:
        ls, proj, task, ml = make_project(label_studio, backend_url, files_root, "segagent e2e sam3 text")
        nothing = ls.tasks.create(project=proj.id, data={"image": "/data/local-files/?d=images/disk.png",
                                                         "expression": "the one on the left"})
        assert ls.ml.get(id=ml.id).state == "CO"
        ls.actions.create(id="retrieve_tasks_predictions", project=proj.id,
                          selected_items={"all": True, "excluded": []})
        (prediction,) = list(ls.predictions.list(task=task.id))
        assert prediction.model_version.startswith("segagent-sam3text-sam3-v") and 0.0 < prediction.score < 1.0
        (brush,) = prediction.result
        assert brush["type"] == "brushlabels" and brush["score"] == prediction.score
        assert (decode_rle(brush["value"]["rle"]).reshape(120, 160, 4)[:, :, 3] > 127).any()
        assert list(ls.predictions.list(task=nothing.id)) == []
    finally:
        stop(proc)


def test_preannotate_a_project_through_queue_workers(label_studio, files_root, redis_url, tmp_path, tiny_qwen2_vl):
    """`segagent preannotate` queues the tasks lacking this model version; a burst `segagent worker`
    posts their predictions through the API; a second run queues nothing (idempotent)."""
    import json
    import uuid

    import redis

    url, token = label_studio
    ls = LabelStudio(base_url=url, api_key=token)
    project, ids = disk_project(ls, files_root, "segagent preannotate", tasks=3)
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "REDIS_URL": redis_url, "SEGAGENT_QUEUE_PREFIX": prefix, "LABEL_STUDIO_URL": url,
           "LABEL_STUDIO_API_KEY": token, "SEGAGENT_BATCH_CHUNK": "2", "SEGAGENT_MAX_STEPS": "2",
           "SEGAGENT_POLICY": str(tiny_qwen2_vl),
           "MODEL_DIR": str(tmp_path / "models"), "PYTHONPATH": str(REPO)}

    def segagent(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "segagent_backend.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    try:
        plan = json.loads(segagent("preannotate", "--project", str(project.id), "--no-wait"))
        assert plan["queued"] == ids and plan["jobs"] == 2 and plan["already_predicted"] == 0
        segagent("worker", "--burst", "--queues", "batch")  # runs the queued chunks, then quits
        for task_id in ids:
            (prediction,) = ls.predictions.list(task=task_id)
            assert prediction.model_version == plan["model_version"]
            assert [r["type"] for r in prediction.result][0] == "brushlabels"
        again = json.loads(segagent("preannotate", "--project", str(project.id)))
        assert again["queued"] == [] and again["already_predicted"] == 3 and again["jobs"] == 0
    finally:
        conn = redis.Redis.from_url(redis_url)
        for key in list(conn.scan_iter(f"rq:*{prefix}-*")) + list(conn.scan_iter(f"{prefix}:*")):
            conn.delete(key)
        conn.srem("rq:queues", *[f"rq:queue:{prefix}-{kind}" for kind in ("interactive", "batch", "train")])


def test_annotations_in_label_studio_train_a_version_that_serves(label_studio, files_root, disk_image, tmp_path,
                                                                  tiny_qwen2_vl):
    """Annotations submitted in Label Studio reach /webhook as Label Studio sends them and are recorded;
    Start Training pulls the project through the SDK, trains, judges on held-out tasks and promotes; the
    next "Retrieve predictions" stores predictions of the new model version."""
    from label_studio_sdk.converter.brush import mask2rle

    from tests.service.test_learning_loop import FAST_ROUND

    policy = tiny_qwen2_vl  # shared read-only: training writes into tmp_path / "models"
    backend_url, proc = serve_backend(label_studio, tmp_path / "models", SEGAGENT_POLICY=str(policy),
                                      SEGAGENT_TRAIN_EVERY="0", **FAST_ROUND)
    try:
        url, token = label_studio
        ls = LabelStudio(base_url=url, api_key=token)
        project = ls.projects.create(title="segagent learning", label_config=CONFIG)
        ls.import_storage.local.create(project=project.id, path=str(files_root / "images"), use_blob_urls=True)
        ml = ls.ml.create(url=backend_url, project=project.id, is_interactive=True, title="segagent")
        ls.webhooks.create(url=f"{backend_url}/webhook", project=project.id, send_payload=True,
                           actions=["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"])
        before = ls.ml.get(id=ml.id).model_version
        region = {"id": "m1", "type": "brushlabels", "from_name": "mask", "to_name": "image",
                  "original_width": 160, "original_height": 120, "image_rotation": 0,
                  "value": {"format": "rle", "rle": mask2rle(disk_image[1].astype(np.uint8) * 255),
                            "brushlabels": ["Disk"]}}
        tasks = [ls.tasks.create(project=project.id, data={"image": "/data/local-files/?d=images/disk.png",
                                                           "expression": "the red disk"}) for _ in range(3)]
        for task in tasks:
            ls.annotations.create(id=task.id, result=[region])
        recorded = sorted((tmp_path / "models" / "corrections" / str(project.id)).glob("a*.json"))
        assert len(recorded) == 3, "Label Studio's ANNOTATION_CREATED webhooks must have been recorded"

        ls.ml.train(id=ml.id)  # Start Training: a round on the project pulled through the SDK
        reports = tmp_path / "models" / "training"
        end = time.monotonic() + 240
        while time.monotonic() < end:
            done = [json.loads(p.read_text()) for p in reports.glob("*.json")]
            if done and done[0]["status"] != "running":
                break
            time.sleep(1)
        (report,) = done
        assert report["status"] == "promoted" and report["source"] == "labelstudio", report
        assert report["counts"]["usable"] == 3 and report["counts"]["held_out"] == 1
        ls.actions.create(id="retrieve_tasks_predictions", project=project.id,
                          selected_items={"all": True, "excluded": []})
        versions = {p.model_version for t in tasks for p in ls.predictions.list(task=t.id)}
        assert versions == {report["version"]} and report["version"] != before
    finally:
        stop(proc)


def test_audit_scores_are_stored_in_label_studio_and_sortable(label_studio, files_root, disk_image, tmp_path,
                                                              tiny_qwen2_vl):
    """`segagent audit` posts one audit-<version> prediction per brush annotation, with the policy's estimate
    as its score; with --select the Data Manager's Prediction score sorts the tasks by it; a second run
    posts nothing (idempotent)."""
    from label_studio_sdk.converter.brush import mask2rle

    url, token = label_studio
    ls = LabelStudio(base_url=url, api_key=token)
    project = ls.projects.create(title="segagent audit", label_config=CONFIG)
    ls.import_storage.local.create(project=project.id, path=str(files_root / "images"), use_blob_urls=True)
    tasks = []
    for shift in (0, 40):  # a good mask and a poor one
        region = {"id": "m1", "type": "brushlabels", "from_name": "mask", "to_name": "image",
                  "original_width": 160, "original_height": 120, "image_rotation": 0,
                  "value": {"format": "rle", "brushlabels": ["Disk"],
                            "rle": mask2rle(np.roll(disk_image[1], shift, axis=1).astype(np.uint8) * 255)}}
        task = ls.tasks.create(project=project.id, data={"image": "/data/local-files/?d=images/disk.png",
                                                         "expression": "the red disk"})
        ls.annotations.create(id=task.id, result=[region])
        tasks.append(task.id)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY=token, SEGAGENT_POLICY=str(tiny_qwen2_vl),
               MODEL_DIR=str(tmp_path / "models"), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")

    def audit(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "segagent_backend.cli", "audit", "--project", str(project.id),
                               "--csv", str(tmp_path / "audit.csv"), "--json", *args],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    first = audit("--select")
    version = first["model_version"]
    assert version.startswith("audit-segagent-") and first["audited"] == 2 and first["selected"]
    estimates = {row["task_id"]: row["estimate"] for row in first["rows"]}
    assert set(estimates) == set(tasks) and all(0.0 <= e <= 1.0 for e in estimates.values())
    # stored: each task's prediction carries the estimate as its score, the audited mask as its result
    for task_id in tasks:
        (prediction,) = ls.predictions.list(task=task_id)
        assert prediction.model_version == version and prediction.score == pytest.approx(estimates[task_id])
        assert [r["type"] for r in prediction.result] == ["brushlabels"]
    # sortable: the Data Manager's Prediction score is the audit's (the project's selected version)
    ordered = list(ls.tasks.list(project=project.id, fields="all",
                                 query=json.dumps({"ordering": ["tasks:predictions_score"]})))
    assert {t.id: t.predictions_score for t in ordered} == pytest.approx(estimates)
    assert [t.predictions_score for t in ordered] == pytest.approx(sorted(estimates.values()))  # ties in any order
    assert all(p.score is not None for t in ordered for p in t.predictions)
    # idempotent: nothing new is posted, the earlier estimates are reported
    again = audit()
    assert again["audited"] == 0 and again["kept"] == 2
    assert {row["task_id"]: row["estimate"] for row in again["rows"]} == estimates
    assert sum(len(list(ls.predictions.list(task=t))) for t in tasks) == 2
