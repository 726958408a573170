"""Issue 23's webhook findings, each attack replayed against the real app (embedded mode): a bulk event that
used to fill MODEL_DIR, the corrections quota, the cap on annotations per event, training rounds started by
anyone (one at a time, none without a project) and Basic auth on /webhook. Queue mode (real Redis):
tests/queue/test_queue_webhook.py."""
from __future__ import annotations

import base64
import logging
import threading

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from segagent_backend.corrections import CorrectionStore
from segagent_backend.queue import training as training_module
from tests.service.payloads import CONFIG

MASK = np.zeros((30, 40), bool)
MASK[5:20, 10:30] = True
RLE = mask2rle(MASK.astype(np.uint8) * 255)


def region() -> dict:
    return {"id": "r1", "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": 40,
            "original_height": 30, "value": {"format": "rle", "rle": RLE, "brushlabels": ["Banana"]}}


def bulk_event(annotations: int, data: dict | None = None, project: int | None = 7, first_id: int = 1,
               task: dict | None = None) -> dict:
    """ANNOTATIONS_CREATED: ``annotations`` annotations of one task whose data is ``data``."""
    task = task or {"id": 2, "data": data or {"image": "http://127.0.0.1:9/2.png"}}
    body = {"action": "ANNOTATIONS_CREATED",
            "annotation": [{"id": first_id + i, "task": 2, "result": [region()]} for i in range(annotations)],
            "task": [task]}
    body["project"] = {"id": project, "label_config": CONFIG} if project else {"label_config": CONFIG}
    return body


def disk_used(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- 1. one webhook fills MODEL_DIR ---------------------------------------------------------------------

def test_a_bulk_event_stores_the_tasks_data_once_not_per_annotation(make_client, make_settings):
    client = make_client(SEGAGENT_TRAIN_EVERY=0)
    data = {"image": "http://127.0.0.1:9/2.png", "expression": "the red disk", "blob": "x" * 1_000_000}
    reply = client.post("/webhook", json=bulk_event(200, data))  # 1.1 MB: used to write 200 MB
    assert reply.status_code == 200 and len(reply.json["recorded"]) == 200
    folder = make_settings().model_dir / "corrections"
    assert disk_used(folder) < 300_000  # 200 small masks (~140 KB); the megabyte of data is not kept at all
    kept = CorrectionStore(folder).corrections(7)
    assert len(kept) == 200 and all(c.data == {"image": data["image"], "expression": "the red disk"} for c in kept)


@pytest.mark.parametrize("field, value, reason", [
    ("image", "http://127.0.0.1:9/" + "a" * 1_000_000 + ".png", "image URL has 1000023 characters"),
    ("expression", "the " + "very " * 200_000 + "red disk", "referring expression has"),
])
def test_a_huge_url_or_expression_is_rejected_not_copied_per_annotation(make_client, make_settings, field, value,
                                                                          reason):
    client = make_client(SEGAGENT_TRAIN_EVERY=0)
    data = {"image": "http://127.0.0.1:9/2.png", "expression": "the red disk", field: value}
    reply = client.post("/webhook", json=bulk_event(20, data))
    assert reply.status_code == 200 and reply.json["recorded"] == []
    assert all(reason in r["reason"] for r in reply.json["rejected"])
    assert disk_used(make_settings().model_dir / "corrections") < 100_000


def test_long_rejection_reasons_are_cut_on_disk(make_client, make_settings):
    client = make_client(SEGAGENT_TRAIN_EVERY=0)
    body = bulk_event(50)
    for annotation in body["annotation"]:  # the reason quotes the sizes sent: 100 KB each
        annotation["result"] = [dict(region(), original_width="w" * 100_000), region()]
    reply = client.post("/webhook", json=body)
    assert reply.status_code == 200 and len(reply.json["rejected"]) == 50
    assert disk_used(make_settings().model_dir / "corrections") < 50 * 1000


def test_more_annotations_than_the_cap_is_413_naming_the_setting(make_client, make_settings):
    client = make_client(SEGAGENT_MAX_WEBHOOK_ANNOTATIONS=10)
    reply = client.post("/webhook", json=bulk_event(11))
    assert reply.status_code == 413 and reply.is_json
    assert "SEGAGENT_MAX_WEBHOOK_ANNOTATIONS" in reply.json["error"] and reply.json["field"] == "annotation"
    assert not (make_settings().model_dir / "corrections").exists()
    assert client.post("/webhook", json=bulk_event(10)).status_code == 200


def test_the_corrections_quota_refuses_with_507_and_a_log_line(make_client, make_settings, caplog):
    client = make_client(SEGAGENT_CORRECTIONS_MAX_MB=1, SEGAGENT_TRAIN_EVERY=0)
    folder = make_settings().model_dir / "corrections"
    replies = []
    with caplog.at_level(logging.ERROR):
        for n in range(40):  # 100 corrections of under 1 KB each per event
            replies.append(client.post("/webhook", json=bulk_event(100, first_id=1 + 100 * n)))
            if replies[-1].status_code != 200:
                break
    full = replies[-1]
    assert full.status_code == 507 and full.is_json, full.data[:300]
    assert "SEGAGENT_CORRECTIONS_MAX_MB=1" in full.json["error"] and "request_id" in full.json
    assert len(replies) - 1 >= 5  # events fit until the store is full
    assert disk_used(folder) <= 2**20  # never past the quota
    assert any("corrections store full" in r.getMessage() for r in caplog.records)
    # nothing of the refused event was written, and deletions still work on a full store
    recorded = len(CorrectionStore(folder).corrections(7))
    assert recorded == 100 * (len(replies) - 1)
    reply = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {"id": 2}]})
    assert reply.status_code == 200 and reply.json["removed"] == 2


# --- 2. anyone who reaches the port starts training -----------------------------------------------------

@pytest.fixture
def slow_rounds(monkeypatch):
    """run_training replaced by a round that waits for ``release``: what a 6-hour round looks like."""
    release, calls = threading.Event(), []

    def run_training(settings, project, data_from, run):
        calls.append((project, data_from))
        release.wait(10)
        return type("Report", (), {"status": "kept", "reason": "test"})()

    monkeypatch.setattr(training_module, "run_training", run_training)
    yield calls
    release.set()


def test_twenty_start_training_calls_start_one_round_in_embedded_mode(make_client, tmp_path, slow_rounds):
    client = make_client(SEGAGENT_POLICY=str(tmp_path))  # a base policy folder: rounds may start
    replies = [client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": p}})
               for p in [7] * 10 + [8] * 10]
    assert all(r.status_code == 200 for r in replies)
    started = [r.json["training"] for r in replies if r.json["training"]["started"]]
    assert len(started) == 1 and slow_rounds == [(7, "corrections")]
    assert all(r.json["training"].get("running") for r in replies[1:])


def test_annotations_without_a_project_start_no_round(make_client, tmp_path, slow_rounds):
    client = make_client(SEGAGENT_POLICY=str(tmp_path), SEGAGENT_TRAIN_EVERY=1)
    reply = client.post("/webhook", json=bulk_event(5, project=None))
    assert reply.status_code == 200 and len(reply.json["recorded"]) == 5
    assert "training" not in reply.json and "no project" in reply.json["note"]
    assert slow_rounds == []
    reply = client.post("/webhook", json=bulk_event(1, first_id=50))  # with its project: a round
    assert reply.json["training"][0]["started"] and slow_rounds == [(7, "corrections")]


# --- Basic auth covers /webhook -------------------------------------------------------------------------

def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_with_basic_auth_an_unauthenticated_webhook_does_nothing(make_client, make_settings, tmp_path, slow_rounds):
    client = make_client(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret-pass", SEGAGENT_POLICY=str(tmp_path))
    folder = make_settings().model_dir / "corrections"
    for headers in ({}, basic("ls", "wrong"), basic("other", "s3cret-pass"), {"Authorization": "Token s3cret-pass"}):
        for body in (bulk_event(3), {"action": "START_TRAINING", "project": {"id": 7}}):
            reply = client.post("/webhook", json=body, headers=headers)
            assert reply.status_code == 401 and reply.is_json, headers
    assert not folder.exists() and slow_rounds == []
    # the header an operator adds to Label Studio's webhook (README: Connect Label Studio, step 7)
    reply = client.post("/webhook", json=bulk_event(3), headers=basic("ls", "s3cret-pass"))
    assert reply.status_code == 200 and reply.json["recorded"] == [1, 2, 3]
