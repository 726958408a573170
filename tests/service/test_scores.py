"""Scores sent to Label Studio only where they track the mask's quality (``Segmenter.score_estimates_iou``,
measured by bench/score_quality.py): GrabCut's predictions carry no ``score``, a SAM tool's and a policy's do;
what posts predictions takes one without a score."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from payloads import CONFIG, keypoint, predict_body

from segagent_backend.agent.segmenters.base import Segmenter
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Click, EpisodeResult, TrajectoryStep
from segagent_backend.labelstudio.config import parse_label_config
from segagent_backend.labelstudio.predictions import Predictions

POLYGON_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image" smart="true"><Label value="Apple"/></PolygonLabels>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Apple"/></KeyPointLabels>
</View>
"""


def test_the_flags_follow_the_measurement():
    assert GrabCutSegmenter.score_estimates_iou is False  # Spearman 0.41 < 0.5 (bench/score_quality.py)
    assert Segmenter.score_estimates_iou is True  # the SAM family keeps its predicted IoU


@pytest.mark.parametrize("config", [CONFIG, POLYGON_CONFIG])
def test_grabcut_predictions_carry_no_score(client, media_server, config):
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120, label="Apple")], config=config)
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.json
    (prediction,) = reply.json["results"]
    assert prediction["model_version"].startswith("segagent-grabcut") and prediction["result"]
    assert "score" not in prediction and all("score" not in r for r in prediction["result"])
    # Label Studio's own validation of a prediction takes it without a score
    assert LabelInterface(config).validate_prediction(prediction, return_errors=True) == []


def test_grabcut_with_the_flag_on_sends_its_score(client, media_server, monkeypatch):
    monkeypatch.setattr(GrabCutSegmenter, "score_estimates_iou", True)
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120)])
    (prediction,) = client.post("/predict", json=body).json["results"]
    (region,) = prediction["result"]
    assert 0.0 <= prediction["score"] <= 1.0 and region["score"] == prediction["score"]


def test_a_sam_tool_keeps_its_predicted_iou(make_client, media_server, tiny_sam_checkpoint):
    client = make_client(SEGAGENT_SEGMENTER="sam", SEGAGENT_SAM_CHECKPOINT=str(tiny_sam_checkpoint))
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120)]))
    assert reply.status_code == 200, reply.json
    (prediction,) = reply.json["results"]
    (region,) = prediction["result"]
    assert 0.0 <= prediction["score"] <= 1.0 and region["score"] == prediction["score"]


class _Host:
    model_version = "segagent-test"


def test_an_unscored_prediction_has_no_score_anywhere():
    """``scored=False`` (a tool whose score is not sent): neither the prediction nor any region, trajectory
    clicks included, has a score; the default keeps the episode's score everywhere."""
    mask = np.zeros((120, 160), bool)
    mask[40:80, 50:110] = True
    episode = EpisodeResult(mask, 0.8, [TrajectoryStep(Click(60, 60), 0.8)])
    config = parse_label_config(CONFIG)
    predictions = Predictions(_Host(), None, None)
    unscored = predictions._prediction(episode, config, mask.shape, None, scored=False)
    assert unscored["result"] and "score" not in unscored and all("score" not in r for r in unscored["result"])
    scored = predictions._prediction(episode, config, mask.shape, None)
    assert scored["score"] == 0.8 and all(r["score"] == 0.8 for r in scored["result"])


class _Predictions:
    def __init__(self):
        self.created = []

    def create(self, **fields):
        self.created.append(fields)
        return type("Created", (), {"id": len(self.created)})()


class _LabelStudio:
    def __init__(self):
        self.predictions = _Predictions()


def test_posting_a_prediction_without_a_score():
    from segagent_backend.labelstudio.client import post_prediction
    from segagent_backend.queue.batch import _post

    ls = _LabelStudio()
    assert post_prediction(ls, 3, [], None, "v") == 1
    assert post_prediction(ls, 4, [], 0.5, "v") == 2
    posted, errors = _post(ls, 1, [{"id": 5}, {"id": 6}],
                           [{"result": [], "model_version": "v"}, {"result": [], "score": 0.7, "model_version": "v"}])
    assert posted == [5, 6] and errors == {}
    assert ["score" in c for c in ls.predictions.created] == [False, True, False, True]
    assert ls.predictions.created[3]["score"] == 0.7
