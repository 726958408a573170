"""POST /predict with smart-tool context: one brush region that decodes (SDK codec) to the object."""
from __future__ import annotations

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from payloads import CONFIG, keypoint, predict_body, rectangle


def decode(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_positive_click_segments_the_object(client, media_server, disk_image):
    _, truth = disk_image
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120)])
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200, reply.json
    (prediction,) = reply.json["results"]
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"]) == (160, 120)
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["Banana"]
    assert iou(decode(region), truth) > 0.85
    assert prediction["model_version"].startswith("segagent-grabcut")
    assert "score" not in prediction and "score" not in region  # GrabCut's score is not sent (test_scores.py)


def test_label_the_annotator_used_is_kept(client, media_server):
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120, label="Apple")])
    (region,) = client.post("/predict", json=body).json["results"][0]["result"]
    assert region["value"]["brushlabels"] == ["Apple"]


def test_negative_click_removes_what_it_touches(client, media_server, disk_image):
    _, truth = disk_image
    clicks = [keypoint(50.0, 50.0, 160, 120, rid="a"), keypoint(50.0, 50.0, 160, 120, positive=False, rid="b")]
    positive_only = decode(client.post("/predict", json=predict_body(f"{media_server}/disk.png", clicks[:1]))
                           .json["results"][0]["result"][0])
    both = client.post("/predict", json=predict_body(f"{media_server}/disk.png", clicks)).json["results"][0]
    mask = decode(both["result"][0]) if both.get("result") else np.zeros_like(truth)  # empty: a per-task error
    assert not mask[60, 80], "the pixel under the negative click must leave the mask"
    assert mask.sum() < positive_only.sum()


def test_missing_is_positive_counts_as_positive(client, media_server, disk_image):
    _, truth = disk_image
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 160, 120, positive=None)])
    (region,) = client.post("/predict", json=body).json["results"][0]["result"]
    assert iou(decode(region), truth) > 0.85


def test_rectangle_prompt(client, media_server, disk_image):
    _, truth = disk_image
    # the disk spans x 50..110 of 160, y 30..90 of 120: a box a little larger, in percent
    body = predict_body(f"{media_server}/disk.png", [rectangle(28.0, 20.0, 42.0, 60.0, 160, 120)])
    (region,) = client.post("/predict", json=body).json["results"][0]["result"]
    assert iou(decode(region), truth) > 0.8


def test_all_clicks_deleted_gives_no_region(client, media_server):
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", []))
    assert reply.status_code == 200 and reply.json["results"][0]["result"] == []


def test_non_interactive_call_without_policy_says_so_per_task(client, media_server):
    body = predict_body(f"{media_server}/disk.png", None)
    body["tasks"].append(dict(body["tasks"][0], id=8))
    reply = client.post("/predict", json=body)
    results = reply.json["results"]
    assert len(results) == 2
    for entry in results:
        assert "result" not in entry, "Label Studio must not store an empty prediction"
        assert "policy" in entry["error"] and entry["model_version"]


def test_setup_answers_model_version_without_loading(make_settings):
    from segagent_backend.app import create_app

    app = create_app(make_settings(SEGAGENT_TRUST_SETUP="true"))  # else /setup's hostname is ignored
    host, sources = app.config["SEGAGENT_HOST"], app.config["SEGAGENT_SOURCES"]
    reply = app.test_client().post("/setup", json={
        "project": "3.1746612998", "schema": CONFIG, "hostname": "http://localhost:8080",
        "access_token": "abc", "extra_params": None})
    assert reply.status_code == 200 and reply.json["model_version"] == host.model_version
    assert host.status == "loading", "/setup must not load the model"
    assert sources.heard_of("3").hostname == "http://localhost:8080"


def test_repeated_clicks_reuse_the_image_embedding(make_settings, media_server):
    from segagent_backend.app import create_app

    app = create_app(make_settings())
    client, host = app.test_client(), app.config["SEGAGENT_HOST"]
    clicks = [keypoint(50.0, 50.0, 160, 120, rid="a"), keypoint(40.0, 45.0, 160, 120, rid="b")]
    for n in (1, 2):
        assert client.post("/predict", json=predict_body(f"{media_server}/disk.png", clicks[:n])).status_code == 200
    assert len(host.cache) == 1 and host.cache.hits >= 1


def test_mask_follows_label_studios_image_size(client, media_server, disk_image):
    # Label Studio says the image is 320x240 (twice what we load): the region must be 320x240 and line up
    _, truth = disk_image
    body = predict_body(f"{media_server}/disk.png", [keypoint(50.0, 50.0, 320, 240)])
    (region,) = client.post("/predict", json=body).json["results"][0]["result"]
    assert (region["original_width"], region["original_height"]) == (320, 240)
    assert iou(decode(region)[::2, ::2], truth) > 0.85
