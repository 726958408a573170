"""PolygonLabels results, scores on every region, and empty masks answered as per-task errors.

Polygon regions are checked by rasterising them back onto the pixel grid (``cv2.fillPoly`` at the pixel
centres the points are given at: ``x_px = x% * width / 100 - 0.5``) and comparing with the mask.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from payloads import keypoint, predict_body
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Click, EpisodeResult, TrajectoryStep
from segagent_backend.labelstudio.config import ConfigError, parse_label_config
from segagent_backend.labelstudio.control_models import PolygonLabelsModel
from segagent_backend.labelstudio.predictions import EMPTY_MASK, Predictions

H, W = 120, 160
POLYGON_CONFIG = (
    '<View><Image name="image" value="$image" zoom="true"/>'
    '<Text name="expression" value="$expression"/>'
    '<PolygonLabels name="poly" toName="image"><Label value="Banana"/><Label value="Apple"/></PolygonLabels>'
    '<KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Banana" smart="true"/>'
    '<Label value="Apple" smart="true"/></KeyPointLabels>'
    '</View>'
)
BOTH_CONFIG = POLYGON_CONFIG.replace(
    '<KeyPointLabels name="tag2"',
    '<BrushLabels name="tag" toName="image"><Label value="Banana"/></BrushLabels>'
    '<KeyPointLabels name="trajectory" toName="image"><Label value="positive"/><Label value="negative"/>'
    '</KeyPointLabels><KeyPointLabels name="tag2"',
)


def rasterise(regions: list[dict]) -> np.ndarray:
    """The union of polygon regions on the pixel grid of their original size."""
    height, width = regions[0]["original_height"], regions[0]["original_width"]
    out = np.zeros((height, width), np.uint8)
    for region in regions:
        points = np.asarray(region["value"]["points"], np.float64) * [width / 100.0, height / 100.0] - 0.5
        cv2.fillPoly(out, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def polygons() -> PolygonLabelsModel:
    return parse_label_config(POLYGON_CONFIG).polygons


def drawn(kind: str) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    if kind == "two parts":
        cv2.circle(mask, (40, 60), 25, 1, -1)
        cv2.rectangle(mask, (90, 20), (140, 100), 1, -1)
    elif kind == "hole":  # a ring with an island in its hole
        cv2.circle(mask, (80, 60), 50, 1, -1)
        cv2.circle(mask, (80, 60), 25, 0, -1)
        cv2.circle(mask, (80, 60), 8, 1, -1)
    elif kind == "thin":  # an open arc of an ellipse, 4 px wide
        cv2.ellipse(mask, (80, 60), (60, 40), 0, 20, 300, 1, 4)
    elif kind == "specks":  # one pixel, a one-pixel line, a 2x2 block
        mask[10, 10] = 1
        mask[50, 20:60] = 1
        mask[70:72, 70:72] = 1
    return mask.astype(bool)


@pytest.mark.parametrize("kind,parts", [("two parts", 2), ("hole", 2), ("thin", 1), ("specks", 3)])
def test_polygons_rasterise_back_to_the_mask(kind, parts):
    mask = drawn(kind)
    regions = polygons().regions(mask, "Banana", "image", 0.875, image_rotation=0)
    assert len(regions) == parts  # one region per 8-connected part
    for region in regions:
        assert region["type"] == "polygonlabels" and region["from_name"] == "poly" and region["to_name"] == "image"
        assert (region["original_width"], region["original_height"]) == (W, H)
        assert region["value"]["polygonlabels"] == ["Banana"] and region["value"]["closed"] is True
        assert region["score"] == 0.875
        points = region["value"]["points"]
        assert len(points) >= 3 and all(len(p) == 2 and 0.0 <= p[0] <= 100.0 and 0.0 <= p[1] <= 100.0 for p in points)
    overlap = iou(rasterise(regions), mask)
    print(f"{kind}: IoU {overlap:.4f}, {sum(len(r['value']['points']) for r in regions)} points")
    assert overlap >= 0.98


def test_a_hole_stays_empty_and_its_island_is_a_region_of_its_own():
    mask = drawn("hole")
    ring, island = polygons().regions(mask, "Banana", "image", 0.5)  # largest part first
    ring_pixels = rasterise([ring])
    assert not ring_pixels[60, 80 + 16] and not ring_pixels[60 - 16, 80], "the hole is cut out of the ring"
    assert ring_pixels[60, 80 + 40] and rasterise([island])[60, 80]
    assert iou(ring_pixels, mask & ~drawn_disk(8)) >= 0.98


def drawn_disk(radius: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (80, 60), radius, 1, -1)
    return mask.astype(bool)


def test_simplification_keeps_fewer_points_than_the_boundary():
    mask = drawn_disk(50)
    (region,) = polygons().regions(mask, "Banana", "image", 0.5)
    boundary, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    assert len(region["value"]["points"]) * 4 < len(boundary[0])


def test_empty_mask_has_no_polygon():
    assert polygons().regions(np.zeros((H, W), bool), "Banana", "image", 0.0) == []


def test_grabcut_set_masks_rasterise_back(grabcut_dir):
    """Every ground-truth mask of the GrabCut set, and GrabCut's own masks for a click on the first
    objects (noisier: specks, several parts), as polygons and back: IoU >= 0.98 each."""
    from segagent_backend.agent.episode import run_given_clicks
    from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
    from trainer.datasets import load_grabcut

    samples = load_grabcut(grabcut_dir)
    control = polygons()
    truth = [iou(rasterise(control.regions(s.gt, "Banana", "image", 1.0)), s.gt) for s in samples]
    tool = GrabCutSegmenter()
    made = []
    for sample in samples[:6]:
        inside = cv2.distanceTransform(sample.gt.astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
        tool.set_image(sample.image)
        mask = run_given_clicks(tool, [Click(float(x), float(y))]).mask
        if mask.any():
            made.append(iou(rasterise(control.regions(mask, "Banana", "image", 1.0)), mask))
    print(f"GrabCut set: {len(truth)} ground-truth masks, IoU min {min(truth):.4f} mean {np.mean(truth):.4f}; "
          f"{len(made)} GrabCut masks, IoU min {min(made):.4f}")
    assert min(truth) >= 0.98 and made and min(made) >= 0.98


# ----- the label config ----------------------------------------------------------------------------------

def test_a_polygon_only_config_is_enough():
    config = parse_label_config(POLYGON_CONFIG)
    assert config.brush is None and config.polygons.name == "poly" and config.polygons.labels == ["Banana", "Apple"]
    assert [c.name for c in config.outputs] == ["poly"] and config.clicks.name == "tag2"


def test_polygons_beside_the_brush():
    config = parse_label_config(BOTH_CONFIG)
    assert [c.name for c in config.outputs] == ["tag", "poly"] and config.trajectory.name == "trajectory"


def test_polygons_on_another_image_are_not_ours():
    xml = ('<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
           '<BrushLabels name="m" toName="a"><Label value="X"/></BrushLabels>'
           '<PolygonLabels name="p" toName="b"><Label value="X"/></PolygonLabels></View>')
    config = parse_label_config(xml)
    assert config.image_name == "a" and config.polygons is None


def test_a_config_without_brush_or_polygons_is_refused():
    xml = ('<View><Image name="i" value="$i"/>'
           '<RectangleLabels name="r" toName="i"><Label value="A"/></RectangleLabels></View>')
    with pytest.raises(ConfigError) as err:
        parse_label_config(xml)
    assert "<BrushLabels> or <PolygonLabels>" in err.value.message


def test_setup_accepts_a_polygon_only_config(client):
    reply = client.post("/setup", json={"project": "3.1746612998", "schema": POLYGON_CONFIG})
    assert reply.status_code == 200 and reply.json["model_version"]


# ----- /predict --------------------------------------------------------------------------------------------

def test_a_click_answers_with_polygons(client, media_server, disk_image):
    _, truth = disk_image
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120, label="Apple")],
                        config=POLYGON_CONFIG)
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.json
    (prediction,) = reply.json["results"]
    regions = prediction["result"]
    assert regions and all(r["type"] == "polygonlabels" and r["from_name"] == "poly" for r in regions)
    assert all(r["value"]["polygonlabels"] == ["Apple"] for r in regions)
    assert "score" not in prediction and all("score" not in r for r in regions)  # GrabCut's score is not sent
    assert iou(rasterise(regions), truth) > 0.85
    assert LabelInterface(POLYGON_CONFIG).validate_prediction(prediction, return_errors=True) == []


def test_brush_and_polygons_together_carry_the_same_score(client, media_server, monkeypatch):
    monkeypatch.setattr(GrabCutSegmenter, "score_estimates_iou", True)  # a tool whose score is sent
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120)], config=BOTH_CONFIG)
    (prediction,) = client.post("/predict", json=body).json["results"]
    kinds = [r["type"] for r in prediction["result"]]
    assert kinds[0] == "brushlabels" and set(kinds[1:]) == {"polygonlabels"}
    assert all(r["score"] == prediction["score"] for r in prediction["result"])
    assert LabelInterface(BOTH_CONFIG).validate_prediction(prediction, return_errors=True) == []


class _Host:
    model_version = "segagent-test"


def test_every_region_carries_the_score():
    """An automatic prediction: the brush, the polygons and the policy's clicks all carry its score."""
    mask = drawn("two parts")
    steps = [TrajectoryStep(Click(40, 60), 0.5), TrajectoryStep(Click(110, 60, False), 0.8)]
    episode = EpisodeResult(mask, 0.8125, steps)
    prediction = Predictions(_Host(), None, None)._prediction(episode, parse_label_config(BOTH_CONFIG), mask.shape,
                                                              None)
    kinds = [r["type"] for r in prediction["result"]]
    assert kinds == ["brushlabels", "polygonlabels", "polygonlabels", "keypointlabels", "keypointlabels"]
    assert prediction["score"] == 0.8125 and all(r["score"] == 0.8125 for r in prediction["result"])
    assert LabelInterface(BOTH_CONFIG).validate_prediction(prediction, return_errors=True) == []


def test_an_empty_mask_is_no_prediction():
    episode = EpisodeResult(np.zeros((H, W), bool), 0.9, [TrajectoryStep(Click(40, 60))])
    answer = Predictions(_Host(), None, None)._prediction(episode, parse_label_config(BOTH_CONFIG), (H, W), None)
    assert answer == {"error": EMPTY_MASK, "status": 422, "model_version": "segagent-test"}


@pytest.mark.parametrize("config", [POLYGON_CONFIG, BOTH_CONFIG])
def test_a_negative_click_alone_gives_a_per_task_message_not_an_empty_region(client, media_server, config):
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120, positive=False)], config=config)
    reply = client.post("/predict", json=body)
    (entry,) = reply.json["results"]
    assert "result" not in entry, "Label Studio must not store an empty mask"
    assert entry["error"] == EMPTY_MASK and entry["status"] == 422 and entry["model_version"]
    assert reply.status_code == 422  # every task failed: the reply says why
