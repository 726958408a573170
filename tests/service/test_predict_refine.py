"""POST /predict with a smart BrushLabels: the brush region in the context is the mask the episode starts from."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from payloads import keypoint, predict_body
from segagent_backend.model_host import ModelHost

# the annotator's clicks refine the brush mask through ModelHost.run_clicks(..., mask=)
needs_host_mask = pytest.mark.skipif("mask" not in inspect.signature(ModelHost.run_clicks).parameters,
                                     reason="ModelHost.run_clicks does not take the start mask yet")

SMART_BRUSH_CONFIG = (
    '<View><Image name="image" value="$image" zoom="true"/>'
    '<Text name="expression" value="$expression"/>'
    '<BrushLabels name="tag" toName="image" smart="true"><Label value="Banana"/></BrushLabels>'
    '<KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Banana" smart="true"/></KeyPointLabels>'
    '<KeyPointLabels name="trajectory" toName="image"><Label value="positive"/><Label value="negative"/></KeyPointLabels>'
    '</View>'
)


def brush(mask: np.ndarray, rid: str = "b1", **extra) -> dict:
    """A brush region as Label Studio sends it for a smart BrushLabels."""
    height, width = mask.shape
    return {"id": rid, "type": "brushlabels", "from_name": "tag", "to_name": "image", "origin": "manual",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Banana"]},
            **extra}


def decode(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def start(disk_image) -> np.ndarray:
    """The disk moved 12 px right: it misses the disk's left side."""
    _, truth = disk_image
    out = np.zeros_like(truth)
    out[:, 12:] = truth[:, :-12]
    return out


def post(client, media_server, regions, config=SMART_BRUSH_CONFIG):
    return client.post("/predict", json=predict_body(f"{media_server}/disk.png", regions, config=config))


@needs_host_mask
def test_a_click_refines_the_brush_mask(client, media_server, disk_image, start):
    _, truth = disk_image
    click = keypoint(35.0, 50.0, 160, 120)  # (56, 60): on the part the brush missed
    reply = post(client, media_server, [brush(start), click])
    assert reply.status_code == 200, reply.json
    (prediction,) = reply.json["results"]
    (region,) = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    refined = decode(region)
    assert iou(refined, truth) > iou(start, truth) + 0.1
    # the same click without the brush region segments from scratch: another mask
    plain = decode(post(client, media_server, [click]).json["results"][0]["result"][0])
    assert not np.array_equal(plain, refined)


@needs_host_mask
def test_a_brush_drawn_on_a_larger_view_is_resized_to_the_image(client, media_server, disk_image, start):
    _, truth = disk_image
    big = np.repeat(np.repeat(start, 2, axis=0), 2, axis=1)  # Label Studio saw the image at 320x240
    click = keypoint(35.0, 50.0, 320, 240)
    (prediction,) = post(client, media_server, [brush(big), click]).json["results"]
    region = prediction["result"][0]
    assert (region["original_width"], region["original_height"]) == (320, 240)
    refined = decode(region)[::2, ::2]
    assert iou(refined, truth) > iou(start, truth) + 0.1


def test_a_brush_alone_without_a_policy_asks_nothing(client, media_server, start):
    reply = post(client, media_server, [brush(start)])
    assert reply.status_code == 200 and reply.json["results"][0]["result"] == []


def test_a_brush_region_of_a_plain_brush_is_refused(client, media_server, start):
    config = SMART_BRUSH_CONFIG.replace('<BrushLabels name="tag" toName="image" smart="true">',
                                        '<BrushLabels name="tag" toName="image">')
    reply = post(client, media_server, [brush(start)], config)
    assert reply.status_code == 400 and "params.context.result[0].type" in reply.json["error"]


@pytest.mark.parametrize("change, field", [
    (lambda r: r["value"].update(rle=[0, 0, 0, 9, 1, 2, 3]), "params.context.result[0].value.rle"),  # header: 9 values
    (lambda r: r["value"].update(rle="abc"), "params.context.result[0].value.rle"),
    (lambda r: r["value"].update(format="png"), "params.context.result[0].value.format"),
    (lambda r: r.pop("original_width"), "params.context.result[0].original_width"),
])
def test_a_bad_brush_region_names_its_field(client, media_server, start, change, field):
    region = brush(start)
    change(region)
    reply = post(client, media_server, [region])
    assert reply.status_code in (400, 422), reply.json
    assert reply.json.get("field") == field and field.rsplit(".", 1)[0] in reply.json["error"]


def test_brush_regions_of_two_sizes_are_refused(client, media_server, start):
    big = np.repeat(np.repeat(start, 2, axis=0), 2, axis=1)
    reply = post(client, media_server, [brush(start), brush(big, rid="b2")])
    assert reply.status_code == 400 and "params.context.result[1]" in reply.json["error"]


def test_a_brush_alone_with_a_policy_starts_the_policy_from_it(make_settings, tiny_qwen2_vl, media_server, start,
                                                              tmp_path):
    from segagent_backend.app import create_app

    folder = tmp_path / "tiny-qwen2-vl"
    folder.symlink_to(tiny_qwen2_vl, target_is_directory=True)
    app = create_app(make_settings(SEGAGENT_POLICY=folder, SEGAGENT_MAX_STEPS=2))
    host = app.config["SEGAGENT_HOST"]
    host.load()
    policy = host.serving_policy
    shown = []
    propose = policy.propose

    def spy(observations, k=1):
        shown.extend(observations)
        return propose(observations, k)

    policy.propose = spy
    reply = post(app.test_client(), media_server, [brush(start)])
    assert reply.status_code == 200, reply.json
    (prediction,) = reply.json["results"]
    assert np.array_equal(shown[0].mask, start) and shown[0].step == 0
    assert "result" in prediction or "error" in prediction  # the tiny random policy's mask may be empty
