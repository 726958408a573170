"""Predictions through the queue: real Redis, real `segagent worker` processes, the Flask app."""
from __future__ import annotations

import time

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from tests.service.payloads import keypoint, predict_body


def mask_of(prediction: dict) -> np.ndarray:
    rle = prediction["result"][0]["value"]["rle"]
    return decode_rle(rle).reshape(120, 160, 4)[:, :, 3] > 127


def test_interactive_through_the_queue_equals_in_process(queue_app, workers, make_client, media_server):
    workers.start(1)
    app = queue_app()
    assert app.config["SEGAGENT_PREDICTOR"].status == "loading"  # the web process loads no model
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120), keypoint(20, 20, 160, 120, False, rid="k2")])
    queued = app.test_client().post("/predict", json=body)
    assert queued.status_code == 200, queued.json
    inline = make_client().post("/predict", json=body)
    assert queued.json["results"][0]["model_version"] == inline.json["results"][0]["model_version"]
    assert np.array_equal(mask_of(queued.json["results"][0]), mask_of(inline.json["results"][0]))
    assert app.config["SEGAGENT_PREDICTOR"].status == "loading"


def test_clicks_are_answered_quickly_by_a_warm_worker(queue_app, workers, media_server):
    workers.start(1)
    client = queue_app().test_client()
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)])
    client.post("/predict", json=body)  # the first click downloads the image
    started = time.perf_counter()
    for _ in range(5):
        assert client.post("/predict", json=body).status_code == 200
    assert (time.perf_counter() - started) / 5 < 1.0
