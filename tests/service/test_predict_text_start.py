"""Automatic predictions started from SAM 3's text prompt (SEGAGENT_TEXT_MODEL), through /predict.

The tiny random ``Sam3Model`` finds random instances; with ``SEGAGENT_TEXT_THRESHOLD=0`` every query with a
non-empty mask is one, with 0.99 none is. Without a policy the best-scored instance is the prediction,
labelled as SAM 3's in the model version; with a policy its episode starts from the instance it rated best.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from payloads import predict_body
from segagent_backend.agent.grounding import TextGrounder
from segagent_backend.agent.policies.base import Policy
from segagent_backend.agent.protocol import Answer
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG


def automatic_body(media_server, expressions: list[str]) -> dict:
    body = predict_body(f"{media_server}/disk.png", None, config=EXAMPLE_CONFIG)
    task = body["tasks"][0]
    body["tasks"] = [dict(task, id=i, data=dict(task["data"], expression=e)) for i, e in enumerate(expressions)]
    return body


def brush_mask(prediction: dict) -> np.ndarray:
    brush = next(r for r in prediction["result"] if r["type"] == "brushlabels")
    return decode_rle(brush["value"]["rle"]).reshape(120, 160, 4)[:, :, 3] > 0


@pytest.fixture(scope="module")
def instances(tiny_sam3_text, media_dir):
    """SAM 3's instances of "red disk" on disk.png, found here with the production loader."""
    image = np.array(Image.open(media_dir / "disk.png").convert("RGB"))
    return TextGrounder.from_pretrained(tiny_sam3_text, "cpu").instances(image, "red disk", threshold=0.0)


def test_text_alone_pre_annotates(make_settings, tiny_sam3_text, media_server, instances):
    from segagent_backend.app import create_app

    app = create_app(make_settings(SEGAGENT_TEXT_MODEL=tiny_sam3_text, SEGAGENT_TEXT_THRESHOLD=0))
    reply = app.test_client().post("/predict", json=automatic_body(media_server, ["the red disk", "red disk"]))
    assert reply.status_code == 200, reply.json
    for prediction in reply.json["results"]:
        assert np.array_equal(brush_mask(prediction), instances[0].mask)  # SAM 3's best-scored instance
        assert prediction["score"] == pytest.approx(instances[0].score)
        assert all(r["score"] == pytest.approx(instances[0].score) for r in prediction["result"])
        assert not [r for r in prediction["result"] if r["from_name"] == "trajectory"]  # no clicks made it
        assert prediction["model_version"].startswith("segagent-sam3text-sam3-v")


def test_an_ungroundable_expression_is_a_per_task_error(make_settings, tiny_sam3_text, media_server):
    from segagent_backend.app import create_app

    app = create_app(make_settings(SEGAGENT_TEXT_MODEL=tiny_sam3_text, SEGAGENT_TEXT_THRESHOLD=0.99))
    reply = app.test_client().post("/predict", json=automatic_body(media_server, ["the red disk", "on the left"]))
    assert reply.status_code == 422, reply.json
    first, second = reply.json["results"]
    assert first["status"] == 422 and "SAM 3 found no 'red disk'" in first["error"] and "result" not in first
    assert second["status"] == 422 and "no noun phrase" in second["error"] and "result" not in second


def test_without_policy_or_text_model_nothing_is_predicted(make_settings, media_server):
    from segagent_backend.app import create_app

    reply = create_app(make_settings()).test_client().post("/predict", json=automatic_body(media_server, ["disk"]))
    assert reply.json["results"][0]["status"] == 501


class RatesOneMask(Policy):
    """A policy whose preference is known by construction: it rates ``preferred`` 0.9 and any other mask
    0.2, and never clicks. It answers through the production interface (``Policy.propose``), so the host,
    ``text_start`` and the episode treat it as they treat a loaded model."""

    def __init__(self, preferred: np.ndarray):
        super().__init__()
        self.preferred, self.shown = preferred, []

    def propose(self, observations, k=1):
        self.stats.calls += 1
        self.shown += [o.mask for o in observations]
        return [[Answer(None, 0.9 if np.array_equal(o.mask, self.preferred) else 0.2)] * k for o in observations]


def test_the_policys_episode_starts_from_the_instance_it_rates_best(make_settings, tiny_sam3_text, tiny_qwen2_vl,
                                                                    media_server, instances):
    from segagent_backend.app import create_app
    from segagent_backend.model_host import ModelHost
    from segagent_backend.registry import Registry

    assert len(instances) >= 2, "the tiny SAM 3 must find several instances for a choice to be made"
    policy = RatesOneMask(preferred=instances[-1].mask)  # SAM 3's worst-scored instance, the policy's best
    settings = make_settings(SEGAGENT_TEXT_MODEL=tiny_sam3_text, SEGAGENT_TEXT_THRESHOLD=0,
                             SEGAGENT_POLICY=tiny_qwen2_vl, SEGAGENT_MAX_STEPS=2)
    host = ModelHost(settings, Registry.from_settings(settings), build_policy=lambda _settings, _checkpoint: policy)
    reply = create_app(settings, host).test_client().post("/predict", json=automatic_body(media_server, ["red disk"]))
    assert reply.status_code == 200, reply.json
    judged = policy.shown[:len(instances)]  # the first call: every instance, in SAM 3's order
    assert all(np.array_equal(a, i.mask) for a, i in zip(judged, instances)) and len(judged) == len(instances)
    # the episode's first observation shows the chosen start: the instance the policy rated 0.9
    assert np.array_equal(policy.shown[len(instances)], instances[-1].mask)
    prediction = reply.json["results"][0]
    assert np.array_equal(brush_mask(prediction), instances[-1].mask)  # it stopped at once: the start is the mask
    assert prediction["score"] == pytest.approx(0.9)
    assert prediction["model_version"].startswith("segagent-qwen2_vl-grabcut-sam3text-sam3-v")  # named by the settings


def test_cli_predicts_from_text_alone(tiny_sam3_text, media_dir, tmp_path, monkeypatch, capsys, instances):
    from segagent_backend.cli import main
    from trainer.traces import rle_to_mask

    monkeypatch.setenv("SEGAGENT_TEXT_MODEL", str(tiny_sam3_text))
    monkeypatch.setenv("SEGAGENT_TEXT_THRESHOLD", "0")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    out = tmp_path / "out.json"
    args = ["predict", "--image", str(media_dir / "disk.png"), "--expression", "the red disk"]
    assert main(args + ["--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert np.array_equal(rle_to_mask(data["mask"]), instances[0].mask)
    assert data["score"] == pytest.approx(instances[0].score) and data["trajectory"] == []
    assert data["model_version"].startswith("segagent-sam3text-sam3-v")
    monkeypatch.setenv("SEGAGENT_TEXT_THRESHOLD", "0.99")
    assert main(args) == 2
    assert "SAM 3 found no 'red disk'" in capsys.readouterr().err
