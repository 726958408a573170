"""`segagent refine`: a project's brush masks refined by the policy and posted as `refine-<version>` predictions.

Against a small fake of the Label Studio API (a project, its tasks with their predictions and annotations,
POST /api/predictions/); the worker's side runs in this process with the tiny Qwen2-VL as the policy.
"""
from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from segagent_backend.labelstudio.annotations import AnnotationError
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG
from segagent_backend import assembly
from segagent_backend.labelstudio.brush import start_mask
from segagent_backend.queue import batch, planner
from segagent_backend.settings import Settings


def brush(mask: np.ndarray) -> dict:
    height, width = mask.shape
    return {"id": "b1", "type": "brushlabels", "from_name": "mask", "to_name": "image",
            "original_width": width, "original_height": height,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Object"]}}


class FakeLabelStudio(http.server.BaseHTTPRequestHandler):
    """GET a project, a task, the task list (one page); POST /api/predictions/ stores a prediction."""

    tasks: dict = {}
    posts: list = []

    def _reply(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "projects"]:
            return self._reply(200, {"id": int(parts[2]), "title": "p", "label_config": EXAMPLE_CONFIG})
        if parts == ["api", "tasks"]:
            if "page=1" not in query and "page=" in query:
                return self._reply(200, {"tasks": [], "total": len(self.tasks)})
            listed = [{"id": t["id"], "predictions_model_versions": ",".join(p["model_version"] for p in t["predictions"])}
                      for t in self.tasks.values()]
            return self._reply(200, {"tasks": listed, "total": len(listed)})
        if parts[:2] == ["api", "tasks"] and len(parts) == 3:
            return self._reply(200, self.tasks[int(parts[2])])
        self._reply(404, {"detail": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        prediction = {"task": body["task"], "model_version": body["model_version"], "result": body["result"],
                      "score": body.get("score")}
        self.posts.append(prediction)
        self.tasks[body["task"]]["predictions"].append(prediction)
        self._reply(201, dict(prediction, id=len(self.posts)))

    def log_message(self, *args):
        pass


@pytest.fixture
def start(disk_image) -> np.ndarray:
    _, truth = disk_image
    out = np.zeros_like(truth)
    out[:, 12:] = truth[:, :-12]
    return out


@pytest.fixture
def label_studio(media_server, start):
    image = f"{media_server}/disk.png"
    task = lambda i, predictions, annotations: {"id": i, "project": 3, "data": {"image": image, "expression": "the red disk"},
                                                "predictions": predictions, "annotations": annotations}
    FakeLabelStudio.tasks = {
        11: task(11, [{"model_version": "other-model", "result": [brush(start)], "score": 0.5}], []),
        12: task(12, [], [{"id": 5, "was_cancelled": False, "result": [brush(start)]}]),
    }
    FakeLabelStudio.posts = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeLabelStudio)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def worker(queue_env, label_studio, tiny_qwen2_vl, tmp_path):
    """This process as the worker: the context `segagent worker` builds, with the tiny policy."""
    settings = Settings.from_env({**queue_env, "LABEL_STUDIO_URL": label_studio, "LABEL_STUDIO_API_KEY": "ls-token",
                                  "SEGAGENT_POLICY": str(tiny_qwen2_vl), "SEGAGENT_MAX_STEPS": "2",
                                  "SEGAGENT_MEDIA_ALLOW_HOSTS": "127.0.0.1", "SEGAGENT_MEDIA_ALLOW_PRIVATE": "true"})
    return assembly.worker_context(settings)


def test_refine_posts_refined_masks_once(worker, start):
    predictions = worker.predictions
    shown = []
    predictions.host.load()
    policy = predictions.host.serving_policy
    propose = policy.propose
    policy.propose = lambda observations, k=1: shown.extend(observations) or propose(observations, k)
    data = {"project": 3, "task_ids": [11, 12], "model_version": predictions.model_version, "force": False,
            "from": "predictions", "source_version": None}
    summary = batch.run(data, context=worker)
    assert summary["posted"] == [11] and list(summary["errors"]) == ["12"], summary
    assert "no brush mask in the task's predictions" in summary["errors"]["12"]
    # one outcome per task, in the job's order: what `segagent refine` counts
    assert [(t["task"], t["outcome"]) for t in summary["tasks"]] == [(11, "written"), (12, "failed")]
    assert "no brush mask" in summary["tasks"][1]["reason"]
    assert np.array_equal(shown[0].mask, start) and shown[0].step == 0  # the policy starts from the brush mask
    (posted,) = FakeLabelStudio.posts
    assert posted["model_version"] == "refine-" + predictions.model_version
    brush_region, *clicks = posted["result"]
    assert brush_region["type"] == "brushlabels" and decode_rle(brush_region["value"]["rle"]).size == 160 * 120 * 4
    assert clicks and all(c["from_name"] == "trajectory" for c in clicks)  # the policy's trajectory
    assert 0.0 <= posted["score"] <= 1.0
    # a second run posts nothing twice
    again = batch.run(data, context=worker)
    assert again["skipped"] == [11] and again["posted"] == []
    assert again["tasks"][0] == {"task": 11, "outcome": "skipped",
                                 "reason": f"already holds a prediction of refine-{predictions.model_version}"}
    # from the annotations: task 12's submitted brush mask
    summary = batch.run(dict(data, task_ids=[12], **{"from": "annotations"}), context=worker)
    assert summary["posted"] == [12], summary


def test_enqueue_skips_refined_tasks(queue_env, label_studio):
    settings = Settings.from_env({**queue_env, "LABEL_STUDIO_URL": label_studio, "LABEL_STUDIO_API_KEY": "ls-token"})
    FakeLabelStudio.tasks[12]["predictions"].append({"model_version": "refine-v7", "result": [], "score": 0.9})
    plan = planner.enqueue(settings, 3, refine={"from": "annotations", "source_version": None}, model_version="v7")
    assert plan.model_version == "refine-v7" and plan.queued == [11] and plan.already_predicted == 1
    assert len(plan.jobs) == 1
    with pytest.raises(Exception, match="refine from 'masks'"):
        planner.enqueue(settings, 3, refine={"from": "masks"}, model_version="v7")


def test_start_mask_picks_the_latest_brush_mask(start):
    class Task:
        predictions = [type("P", (), {"model_version": "a", "result": [brush(start)]})(),
                       type("P", (), {"model_version": "refine-a", "result": [brush(~start)]})()]
        annotations = [{"was_cancelled": True, "result": [brush(~start)]}]

    assert np.array_equal(start_mask(Task, "predictions"), start)  # never a refined one
    assert np.array_equal(start_mask(Task, "predictions", "refine-a"), ~start)
    with pytest.raises(AnnotationError, match="no brush mask in the task's annotations"):
        start_mask(Task, "annotations")  # the only annotation was cancelled
    bad = brush(start)
    bad["value"]["rle"] = [0, 0, 0, 9, 1]
    Task.annotations = [{"result": [bad]}]
    with pytest.raises(AnnotationError, match="header claims 9 values"):
        start_mask(Task, "annotations")


def test_refine_command_queues_and_prints_the_plan(queue_env, label_studio, monkeypatch, capsys):
    import argparse

    from segagent_backend.cli import refine

    for key, value in {**queue_env, "LABEL_STUDIO_URL": label_studio, "LABEL_STUDIO_API_KEY": "ls-token"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SEGAGENT_MODEL_VERSION", raising=False)
    parser = argparse.ArgumentParser(prog="segagent")
    refine.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["refine", "--project", "3", "--from", "annotations", "--no-wait"])
    assert refine.cmd_refine(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model_version"].startswith("refine-") and summary["queued"] == [11, 12] and summary["jobs"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["refine", "--project", "3", "--from", "masks"])
