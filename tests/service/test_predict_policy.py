"""Automatic predictions with a SegAgent policy configured as in production (SEGAGENT_POLICY).

The policy is a tiny random Qwen2-VL loaded by the production loader; constrained decoding makes
its answers well-formed clicks, so episodes run and every result must have the Label Studio shape:
a brush region, the click trajectory on the trajectory control (labels by sign, in click order),
the PRM score and the model version. Quality is not what these tests check.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from payloads import keypoint, predict_body
from segagent_backend.cli import main
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory, tiny_qwen2_vl):
    """The shared tiny Qwen2-VL under the name ``tiny-qwen2-vl`` (a link: the model version is named after it)."""
    folder = tmp_path_factory.mktemp("policy") / "tiny-qwen2-vl"
    folder.symlink_to(tiny_qwen2_vl, target_is_directory=True)
    return folder


@pytest.fixture
def policy_app(make_settings, policy_folder):
    from segagent_backend.app import create_app

    return create_app(make_settings(SEGAGENT_POLICY=policy_folder, SEGAGENT_MAX_STEPS=3))


def automatic_body(media_server, n_tasks: int) -> dict:
    body = predict_body(f"{media_server}/disk.png", None, config=EXAMPLE_CONFIG)
    body["tasks"] = [dict(body["tasks"][0], id=i) for i in range(n_tasks)]
    return body


def test_automatic_predictions_for_a_batch(policy_app, media_server):
    host = policy_app.config["SEGAGENT_HOST"]
    reply = policy_app.test_client().post("/predict", json=automatic_body(media_server, 3))
    assert reply.status_code == 200, reply.json
    results = reply.json["results"]
    assert len(results) == 3
    for prediction in results:
        brush, *clicks = prediction["result"]
        assert brush["type"] == "brushlabels" and brush["from_name"] == "mask"
        mask = decode_rle(brush["value"]["rle"]).reshape(120, 160, 4)[:, :, 3]
        assert mask.shape == (120, 160)
        assert all(c["type"] == "keypointlabels" and c["from_name"] == "trajectory" for c in clicks)
        assert all(c["value"]["keypointlabels"][0] in ("positive", "negative") for c in clicks)
        assert 0.0 <= prediction["score"] <= 1.0
        assert prediction["model_version"].startswith("segagent-tiny-qwen2-vl-grabcut")
    # the three tasks ran as one lockstep batch: one policy call per step, not per task
    stats = host.serving_policy.stats
    assert stats.calls <= 4 and stats.answers >= 3
    assert stats.malformed == 0


def test_refinement_continues_from_the_annotators_clicks(make_settings, policy_folder, media_server):
    from segagent_backend.app import create_app

    app = create_app(make_settings(SEGAGENT_POLICY=policy_folder, SEGAGENT_REFINE="true", SEGAGENT_MAX_STEPS=2))
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)], config=EXAMPLE_CONFIG)
    body["params"]["context"]["result"][0]["from_name"] = "click"
    reply = app.test_client().post("/predict", json=body)
    assert reply.status_code == 200, reply.json
    policy = app.config["SEGAGENT_HOST"].serving_policy
    assert policy.stats.calls >= 1, "the policy must have been asked to continue"


def test_cli_expression_runs_the_policy(policy_folder, media_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGAGENT_POLICY", str(policy_folder))
    monkeypatch.setenv("SEGAGENT_MAX_STEPS", "2")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    out = tmp_path / "out.json"
    assert main(["predict", "--image", str(media_dir / "disk.png"), "--expression", "the red disk",
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["expression"] == "the red disk" and data["model_version"].startswith("segagent-")
    assert all(step["iou_estimate"] is not None for step in data["trajectory"])
    assert data["malformed_answers"] == 0 and data["stop_reason"]
    assert np.array(data["mask"]["size"]).tolist() == [120, 160]


def test_unreadable_policy_folder_is_reported_with_path_and_reason(make_settings, tmp_path, media_server):
    from segagent_backend.app import create_app

    broken = tmp_path / "broken-policy"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    app = create_app(make_settings(SEGAGENT_POLICY=broken))
    reply = app.test_client().post("/predict", json=automatic_body(media_server, 1))
    assert reply.status_code == 503 and "broken-policy" in reply.json["error"]
    assert "broken-policy" in app.test_client().get("/health").json["model"]
