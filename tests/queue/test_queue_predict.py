"""Predictions through the queue: real Redis, real `segagent worker` processes, the Flask app."""
from __future__ import annotations

import time

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from segagent_backend.app import create_app
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG
from tests.conftest import make_disk_image
from tests.service.payloads import keypoint, predict_body


def mask_of(prediction: dict) -> np.ndarray:
    rle = prediction["result"][0]["value"]["rle"]
    return decode_rle(rle).reshape(120, 160, 4)[:, :, 3] > 127


def test_interactive_through_the_queue_equals_in_process(queue_app, workers, make_client, media_server):
    workers.start(1)
    app = queue_app()
    assert app.config["SEGAGENT_HOST"] is None  # the web process loads no model
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120), keypoint(20, 20, 160, 120, False, rid="k2")])
    queued = app.test_client().post("/predict", json=body)
    assert queued.status_code == 200, queued.json
    inline = make_client().post("/predict", json=body)
    assert queued.json["results"][0]["model_version"] == inline.json["results"][0]["model_version"]
    assert np.array_equal(mask_of(queued.json["results"][0]), mask_of(inline.json["results"][0]))
    assert app.config["SEGAGENT_HOST"] is None


def test_clicks_are_answered_quickly_by_a_warm_worker(queue_app, workers, media_server):
    workers.start(1)
    client = queue_app().test_client()
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)])
    client.post("/predict", json=body)  # the first click downloads the image
    started = time.perf_counter()
    for _ in range(5):
        assert client.post("/predict", json=body).status_code == 200
    assert (time.perf_counter() - started) / 5 < 1.0


@pytest.fixture(scope="module")
def policy_folder(tiny_qwen2_vl):
    return tiny_qwen2_vl


@pytest.fixture(scope="module")
def disks(media_dir):
    """Five task images with the disk in different places, so each task has its own mask."""
    for i in range(5):
        image, _ = make_disk_image(centre=(40 + 20 * i, 40 + 8 * i), radius=20 + 2 * i)
        Image.fromarray(image).save(media_dir / f"disk{i}.png")
    return [f"disk{i}.png" for i in range(5)]


def test_batch_fans_out_in_chunks_and_keeps_task_order(queue_app, workers, make_settings, policy_folder, disks,
                                                       media_server, slow_media):
    policy = {"SEGAGENT_POLICY": policy_folder, "SEGAGENT_MAX_STEPS": 2}
    workers.start(1, **policy)
    app = queue_app(SEGAGENT_BATCH_CHUNK=2, SEGAGENT_PREDICT_DEADLINE=8, **policy)
    body = predict_body("", None, config=EXAMPLE_CONFIG)
    urls = [f"{media_server}/{name}" for name in disks[:4]] + [f"{slow_media}/slow/10/{disks[4]}"]
    body["tasks"] = [{"id": i, "data": {"image": url, "expression": "the red disk"}} for i, url in enumerate(urls)]
    started = time.monotonic()
    reply = app.test_client().post("/predict", json=body)
    assert time.monotonic() - started < 12
    assert reply.status_code == 200, reply.json
    results = reply.json["results"]
    assert len(results) == 5
    # the last chunk waits on a slow image host past the deadline: an error for it, never an empty result
    assert "result" not in results[4] and results[4]["status"] == 504
    inline = create_app(make_settings(**policy)).test_client().post("/predict", json=dict(body, tasks=body["tasks"][:4]))
    for queued, local in zip(results[:4], inline.json["results"]):
        assert np.array_equal(mask_of(queued), mask_of(local))
        assert [c["value"] for c in queued["result"][1:]] == [c["value"] for c in local["result"][1:]]  # the clicks
    masks = [mask_of(r) for r in results[:4]]
    assert all(not np.array_equal(a, b) for a, b in zip(masks, masks[1:]))  # really one answer per task


def test_a_click_overtakes_a_batch_backlog(queue_app, queue_env, workers, media_server, slow_media):
    """One worker, five slow batch jobs queued first: the click is answered after at most the one
    batch job already running, while the rest of the backlog still waits."""
    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from segagent_backend.queue import status
    from segagent_backend.labelstudio.request import parse_predict
    from segagent_backend.settings import Settings
    from segagent_backend.queue.names import QueueNames

    workers.start(1)
    conn = redis.Redis.from_url(queue_env["REDIS_URL"])
    names = QueueNames(queue_env["SEGAGENT_QUEUE_PREFIX"])
    batch = Queue(names.queue("batch"), connection=conn, serializer=JSONSerializer)
    for i in range(5):  # distinct URLs (1.00 s, 1.01 s, ...): the worker's media cache must not help
        slow = predict_body(f"{slow_media}/slow/1.0{i}/disk.png", [keypoint(50, 50, 160, 120)])
        batch.enqueue("segagent_backend.queue.jobs.predict",
                      parse_predict(slow, Settings.from_env({})).to_json())
    started = time.monotonic()
    reply = queue_app().test_client().post("/predict", json=predict_body(f"{media_server}/disk.png",
                                                                         [keypoint(50, 50, 160, 120)]))
    assert reply.status_code == 200, reply.json
    assert time.monotonic() - started < 2.5
    assert status.snapshot(conn, names).queues[1].queued >= 2
