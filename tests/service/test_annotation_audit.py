"""Annotation audit: POST /audit for one annotation (a tiny real policy) and ``segagent audit``'s project
logic against an in-memory Label Studio (idempotence, --force, edited masks, rejected annotations).

The real Label Studio side (predictions stored, sortable, a second run posting nothing) is in
tests/e2e/test_label_studio.py.
"""
from __future__ import annotations

import copy
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from segagent_backend.cli import audit as cli_audit
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG


def brush(mask: np.ndarray, label: str = "Object", region_id: str = "b1") -> dict:
    height, width = mask.shape
    return {"id": region_id, "type": "brushlabels", "from_name": "mask", "to_name": "image",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}


def audit_body(image_url: str, mask: np.ndarray) -> dict:
    return {"task": {"id": 3, "data": {"image": image_url, "expression": "the red disk"}},
            "annotation": {"id": 9, "result": [brush(mask)]}, "label_config": EXAMPLE_CONFIG}


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory, tiny_qwen2_vl):
    """The shared tiny Qwen2-VL under the name ``tiny-qwen2-vl`` (the model version is named after it)."""
    folder = tmp_path_factory.mktemp("policy") / "tiny-qwen2-vl"
    folder.symlink_to(tiny_qwen2_vl, target_is_directory=True)
    return folder


@pytest.fixture
def policy_app(make_settings, policy_folder):
    from segagent_backend.app import create_app

    return create_app(make_settings(SEGAGENT_POLICY=policy_folder))


# ----- POST /audit -------------------------------------------------------------------------------------
def test_an_audit_version_is_the_policy_version_with_the_audit_prefix():
    from segagent_backend.annotation_audit import audit_version

    assert audit_version("segagent-grabcut-qwen2_vl-abc") == "audit-segagent-grabcut-qwen2_vl-abc"


def test_audit_scores_one_annotation_with_one_policy_call(policy_app, media_server, disk_image, one_torch_thread):
    reply = policy_app.test_client().post("/audit", json=audit_body(f"{media_server}/disk.png", disk_image[1]))
    assert reply.status_code == 200, reply.json
    assert isinstance(reply.json["score"], float) and 0.0 <= reply.json["score"] <= 1.0
    assert reply.json["model_version"].startswith("audit-segagent-tiny-qwen2-vl")
    stats = policy_app.config["SEGAGENT_HOST"].serving_policy.stats
    assert stats.calls == 1 and stats.answers == 1


def _without(body: dict, *path: str) -> dict:
    body = copy.deepcopy(body)
    target = body
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return body


def _with(body: dict, value, *path: str) -> dict:
    body = copy.deepcopy(body)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


def bad_bodies(url: str, mask: np.ndarray) -> list[tuple[str, dict, str]]:
    good = audit_body(url, mask)
    wrong_size = brush(mask)
    wrong_size["original_width"] = 80  # the RLE holds 160x120: refused before decoding
    keypoint = {"type": "keypointlabels", "value": {"x": 1, "y": 1, "keypointlabels": ["Object"]}}
    return [
        ("no task", _without(good, "task"), "task"),
        ("no task data", _without(good, "task", "data"), "task.data"),
        ("no image in the task", _with(good, {"expression": "x"}, "task", "data"), "task.data"),
        ("no annotation", _without(good, "annotation"), "annotation"),
        ("no result", _without(good, "annotation", "result"), "annotation.result"),
        ("an empty result", _with(good, [], "annotation", "result"), "annotation.result"),
        ("no brush region", _with(good, [keypoint], "annotation", "result"), "annotation.result"),
        ("an RLE of another size", _with(good, [wrong_size], "annotation", "result"), "annotation.result"),
        ("an empty mask", _with(good, [brush(np.zeros_like(mask))], "annotation", "result"), "annotation.result"),
        ("an id that is no id", _with(good, "x/../1", "annotation", "id"), "annotation.id"),
        ("no label config", _without(good, "label_config"), "label_config"),
        ("a label config without BrushLabels", _with(good, '<View><Image name="image" value="$image"/></View>',
                                                     "label_config"), "label_config"),
    ]


def test_bad_bodies_are_4xx_naming_the_field(policy_app, media_server, disk_image):
    client = policy_app.test_client()
    for name, body, field in bad_bodies(f"{media_server}/disk.png", disk_image[1]):
        reply = client.post("/audit", json=body)
        assert 400 <= reply.status_code < 500, (name, reply.status_code, reply.json)
        assert reply.json.get("field") == field and field in reply.json["error"], (name, reply.json)
    assert policy_app.config["SEGAGENT_HOST"].serving_policy is None  # nothing was loaded for a bad body


def test_an_image_that_cannot_be_fetched_is_a_json_error(policy_app, media_server, disk_image):
    reply = policy_app.test_client().post("/audit", json=audit_body(f"{media_server}/missing.png", disk_image[1]))
    assert reply.status_code == 502 and "could not be fetched" in reply.json["error"]  # as /predict answers it


def test_without_a_policy_audit_is_501(make_client, media_server, disk_image):
    reply = make_client().post("/audit", json=audit_body(f"{media_server}/disk.png", disk_image[1]))
    assert reply.status_code == 501 and "SEGAGENT_POLICY" in reply.json["error"]


def test_queue_mode_answers_501_naming_the_command(make_settings, media_server, disk_image):
    from segagent_backend.app import create_app

    app = create_app(make_settings(REDIS_URL="redis://127.0.0.1:1/0"))
    reply = app.test_client().post("/audit", json=audit_body(f"{media_server}/disk.png", disk_image[1]))
    assert reply.status_code == 501 and "segagent audit" in reply.json["error"]


def test_openapi_describes_audit(make_client):
    spec = make_client().get("/openapi.json").json
    body = spec["paths"]["/audit"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["task", "annotation", "label_config"]
    assert set(body["example"]) == {"task", "annotation", "label_config"}


# ----- segagent audit against an in-memory Label Studio ------------------------------------------------
class FakeLabelStudio:
    """The few SDK calls the audit makes, on tasks held in memory."""

    def __init__(self, project: int, tasks: list[dict]):
        self.project, self.next_id, self.posted, self.deleted = project, 100, [], []
        self.task_list = tasks
        self.selected = None
        self.projects = SimpleNamespace(get=lambda id: SimpleNamespace(label_config=EXAMPLE_CONFIG),
                                        update=self._select)
        self.tasks = SimpleNamespace(list=self._list, get=self._get)
        self.predictions = SimpleNamespace(create=self._create, delete=self._delete)

    def _select(self, id, model_version):
        self.selected = model_version

    def _list(self, project, fields):
        assert project == self.project and fields == "all"
        return [copy.deepcopy(t) for t in self.task_list]

    def _get(self, id):
        return copy.deepcopy(next(t for t in self.task_list if str(t["id"]) == id))

    def _create(self, task, result, score, model_version):
        self.next_id += 1
        prediction = {"id": self.next_id, "task": task, "result": result, "score": score, "model_version": model_version}
        next(t for t in self.task_list if t["id"] == task)["predictions"].append(prediction)
        self.posted.append(prediction)
        return SimpleNamespace(id=self.next_id)

    def _delete(self, id):
        self.deleted.append(id)
        for t in self.task_list:
            t["predictions"] = [p for p in t["predictions"] if p["id"] != id]


class ScriptedJudge:
    """Masks -> estimates from a script; records the size of every call."""

    def __init__(self, *estimates):
        self.estimates, self.calls = list(estimates), []

    def __call__(self, requests):
        self.calls.append(len(requests))
        return [self.estimates.pop(0) for _ in requests]


@pytest.fixture
def project(media_server, disk_image):
    mask = disk_image[1]
    url = f"{media_server}/disk.png"

    def task(task_id, annotations):
        return {"id": task_id, "project": 7, "data": {"image": url, "expression": "the red disk"},
                "annotations": annotations, "predictions": []}

    tasks = [
        task(1, [{"id": 11, "result": [brush(mask)]}]),
        task(2, [{"id": 21, "result": [brush(np.roll(mask, 20, axis=1))]},
                 {"id": 22, "result": [brush(mask)], "was_cancelled": True}]),
        task(3, [{"id": 31, "result": []}]),  # no brush region: rejected, never judged
        task(4, []),  # not annotated: not listed
        task(5, [{"id": 51, "result": [brush(mask)]}]),
    ]
    return FakeLabelStudio(7, tasks)


def run(settings, ls, judge, **kwargs):
    return cli_audit.audit_project(settings, ls, judge, "segagent-x", 7, batch=2, **kwargs)


def test_project_audit_posts_one_prediction_per_annotation_in_chunks(make_settings, project):
    settings = make_settings()
    judge = ScriptedJudge(0.9, 0.3, None)
    rows = run(settings, project, judge)
    assert judge.calls == [2, 1]  # batch 2: one call per chunk
    by_annotation = {r.annotation_id: r for r in rows}
    assert by_annotation[11].status == "audited" and by_annotation[11].estimate == 0.9
    assert by_annotation[21].status == "audited" and by_annotation[21].estimate == 0.3
    assert by_annotation[51].status == "no estimate" and by_annotation[51].estimate is None
    assert by_annotation[31].status == "rejected" and "brush" in by_annotation[31].reason
    assert 22 not in by_annotation  # cancelled
    assert [(p["task"], p["score"], p["model_version"]) for p in project.posted] == [
        (1, 0.9, "audit-segagent-x"), (2, 0.3, "audit-segagent-x")]
    region = project.posted[0]["result"][0]
    assert region["type"] == "brushlabels" and region["score"] == 0.9 and region["id"].startswith("audit-a11-")
    assert region["value"]["rle"] == project.task_list[0]["annotations"][0]["result"][0]["value"]["rle"]
    assert [r.annotation_id for r in cli_audit.worst_first(rows)][:2] == [21, 11]


def test_a_second_run_posts_nothing_and_reports_the_earlier_estimates(make_settings, project):
    settings = make_settings()
    run(settings, project, ScriptedJudge(0.9, 0.3, None))
    judge = ScriptedJudge(0.5)  # only the annotation without an estimate is judged again
    rows = run(settings, project, judge)
    assert judge.calls == [1] and len(project.posted) == 3 and project.deleted == []
    kept = {r.annotation_id: r.estimate for r in rows if r.status == "kept"}
    assert kept == {11: 0.9, 21: 0.3}


def test_force_and_an_edited_mask_replace_the_earlier_audit(make_settings, project, disk_image):
    settings = make_settings()
    run(settings, project, ScriptedJudge(0.9, 0.3, 0.5))
    first = {p["task"]: p["id"] for p in project.posted}
    # task 1's annotation is edited: only it is judged again, and its old audit goes
    project.task_list[0]["annotations"][0]["result"] = [brush(np.roll(disk_image[1], 5, axis=0))]
    judge = ScriptedJudge(0.7)
    rows = run(settings, project, judge)
    assert judge.calls == [1] and project.deleted == [first[1]]
    assert [p["score"] for p in project.task_list[0]["predictions"]] == [0.7]
    # --force: every audited annotation again, each replacing its own earlier audit
    judge = ScriptedJudge(0.1, 0.2, 0.3)
    rows = run(settings, project, judge, force=True)
    assert judge.calls == [2, 1] and sum(r.status == "audited" for r in rows) == 3
    assert all(len(t["predictions"]) == 1 for t in project.task_list if t["id"] in (1, 2, 5))


def test_only_the_given_tasks(make_settings, project):
    judge = ScriptedJudge(0.4)
    rows = cli_audit.audit_project(make_settings(), project, judge, "segagent-x", 7, task_ids=[5])
    assert [(r.task_id, r.status) for r in rows] == [(5, "audited")]


def test_csv_and_report_list_the_worst_first(tmp_path):
    rows = [cli_audit.Row(1, 11, 0.9, "audited"), cli_audit.Row(2, 21, 0.2, "kept"),
            cli_audit.Row(3, 31, None, "rejected", reason="no brush region in the annotation")]
    path = tmp_path / "audit.csv"
    cli_audit.write_csv(path, rows)
    with open(path) as f:
        read = list(csv.DictReader(f))
    assert [r["task_id"] for r in read] == ["2", "1", "3"] and read[0]["estimate"] == "0.2000"
    summary = cli_audit.summarise(rows, 7, "audit-x", str(path), False)
    text = cli_audit.report(rows, summary, top=1)
    lines = text.splitlines()
    assert "0.200" in lines[1] and "1 more in the CSV" in lines[2] and "rejected: no brush" in lines[3]
    assert json.dumps(summary) and summary["audited"] == 1 and summary["kept"] == 1 and summary["rejected"] == 1


def test_the_command_needs_label_studio_and_a_policy(monkeypatch, tmp_path, capsys):
    from segagent_backend.cli import main

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "SEGAGENT_POLICY", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["audit", "--project", "1", "--csv", str(tmp_path / "a.csv")]) == 2
    assert "LABEL_STUDIO_URL" in capsys.readouterr().err
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x" * 40)
    assert main(["audit", "--project", "1", "--csv", str(tmp_path / "a.csv")]) == 2
    assert "SEGAGENT_POLICY" in capsys.readouterr().err
    assert main(["audit", "--project", "1", "--csv", str(tmp_path / "no-such-folder" / "a.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_failed_annotations_make_the_command_fail_naming_the_first_reasons(monkeypatch, tmp_path, capsys):
    """An annotation whose image did not load (or whose estimate Label Studio refused) is counted failed with its
    reason in the summary; the command says so in one line and exits with status 1."""
    from segagent_backend.cli import main

    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x" * 40)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(cli_audit, "PolicyJudge", lambda settings, batch: type("J", (), {"model_version": "v1",
                                                                                        "batch": batch})())
    rows = [cli_audit.Row(1, 11, 0.9, "audited", "audit-v1"),
            cli_audit.Row(2, 21, None, "failed", "audit-v1", "image could not be fetched")]
    monkeypatch.setattr(cli_audit, "audit_project", lambda *args, **kwargs: rows)
    assert main(["audit", "--project", "1", "--json", "--csv", str(tmp_path / "a.csv")]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["failed"] == 1 and summary["failures"] == [{"task": 2, "annotation": 21,
                                                                "reason": "image could not be fetched"}]
    (line,) = err.strip().splitlines()
    assert line.startswith("segagent audit: 1 of 2 annotation(s) failed") and "task 2 annotation 21: image could" in line
