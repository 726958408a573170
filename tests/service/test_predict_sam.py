"""/predict with the SAM tools, configured as in production (settings -> loader -> segmenter).

The models are tiny and random (no weights can be downloaded), so these tests check the plumbing,
not mask quality: a region of the image's size that decodes with the SDK and follows the tool's
own output; the image embedding computed once per image across requests.
"""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from payloads import keypoint, predict_body, rectangle


@pytest.fixture(scope="module")
def sam_checkpoint(tiny_sam_checkpoint):
    return tiny_sam_checkpoint  # built through the torchvision stand-in on CPU machines (tests/tiny_models.py)


@pytest.fixture(scope="module")
def hf_sam_folder(tiny_hf_sam):
    return tiny_hf_sam


@pytest.fixture(params=["sam", "hf-sam"])
def sam_app(request, make_settings):
    from segagent_backend.app import create_app

    if request.param == "sam":
        env = {"SEGAGENT_SEGMENTER": "sam", "SEGAGENT_SAM_CHECKPOINT": request.getfixturevalue("sam_checkpoint")}
    else:
        env = {"SEGAGENT_SEGMENTER": "hf-sam", "SEGAGENT_SAM_MODEL": request.getfixturevalue("hf_sam_folder")}
    return create_app(make_settings(**env))


def decode(region: dict) -> np.ndarray:
    return decode_rle(region["value"]["rle"]).reshape(region["original_height"], region["original_width"], 4)[:, :, 3] > 127


def test_clicks_and_box_give_a_brush_region_from_the_tool(sam_app, media_server, disk_image):
    client, host = sam_app.test_client(), sam_app.config["SEGAGENT_HOST"]
    clicks = [keypoint(50, 50, 160, 120, rid="a"), keypoint(20, 20, 160, 120, positive=False, rid="b")]
    for n in (1, 2):
        reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", clicks[:n]))
        assert reply.status_code == 200, reply.json
        prediction = reply.json["results"][0]
        (region,) = prediction["result"]
        assert (region["original_width"], region["original_height"]) == (160, 120)
        assert prediction["model_version"].startswith(f"segagent-{host.settings.segmenter}-")
        assert 0.0 <= prediction["score"] <= 1.0
        # the same episode run directly on the tool gives the same mask
        direct = host.run_clicks(disk_image[0], [c.to_pixels(160, 120) for c in _clicks(clicks[:n])])
        assert np.array_equal(decode(region), direct.mask)
    assert len(host.cache) == 1 and host.cache.misses == 1, "one image encoding for all requests"
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", [rectangle(28, 20, 42, 60, 160, 120)]))
    assert reply.status_code == 200 and reply.json["results"][0]["result"][0]["type"] == "brushlabels"


def _clicks(regions):
    from segagent_backend.labelstudio.config import parse_label_config
    from payloads import CONFIG

    return [parse_label_config(CONFIG).clicks.click(r) for r in regions]


def test_broken_weights_are_reported_not_served(make_settings, tmp_path, media_server):
    from segagent_backend.app import create_app

    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    app = create_app(make_settings(SEGAGENT_SEGMENTER="sam", SEGAGENT_SAM_CHECKPOINT=bad))
    client = app.test_client()
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)]))
    assert reply.status_code == 503 and "broken.pth" in reply.json["error"]
    health = client.get("/health")
    assert health.status_code == 503 and "broken.pth" in health.json["model"]
