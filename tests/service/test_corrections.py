"""Annotations -> corrections: checked with the SDK's own brush codec, recorded on disk, forgotten on delete."""
from __future__ import annotations

import time

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from segagent_backend.corrections import CorrectionStore
from segagent_backend.labelstudio.annotations import corrections_from_tasks, corrections_from_webhook
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG
from segagent_backend.webhook import handle_webhook

CONFIG = EXAMPLE_CONFIG


def brush(mask: np.ndarray, label: str = "Banana", width=None, height=None) -> dict:
    h, w = mask.shape
    return {"id": "r1", "type": "brushlabels", "from_name": "tag", "to_name": "image",
            "original_width": width or w, "original_height": height or h,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}


def body(annotation_id: int, task_id: int, result: list, action="ANNOTATION_CREATED", **annotation) -> dict:
    return {"action": action, "project": {"id": 7, "label_config": CONFIG},
            "annotation": {"id": annotation_id, "task": task_id, "result": result, **annotation},
            "task": {"id": task_id, "data": {"image": f"http://example.invalid/{task_id}.png"},
                     "predictions": [{"id": 99, "model_version": "v1"}]}}


@pytest.fixture
def mask():
    m = np.zeros((30, 40), bool)
    m[5:20, 10:30] = True
    return m


def test_a_brush_annotation_becomes_a_correction(mask):
    good, bad = corrections_from_webhook(body(1, 2, [brush(mask)], parent_prediction=99))
    assert not bad and len(good) == 1
    c = good[0]
    assert (c.project, c.task_id, c.annotation_id, c.expression) == (7, 2, 1, "Banana")
    assert c.prediction == {"id": 99, "model_version": "v1"}  # the prediction it corrected
    assert np.array_equal(c.mask(), mask)


@pytest.mark.parametrize("result, reason", [
    ([], "no brush region"),
    ([{"type": "keypointlabels", "value": {"x": 1, "y": 2}}], "no brush region"),
    ("empty", "empty"),
    ("wrong-size", "pixels"),
    ("no-size", "original_width"),
])
def test_unusable_annotations_are_rejected_with_a_reason(mask, result, reason):
    if result == "empty":
        result = [brush(np.zeros_like(mask))]
    elif result == "wrong-size":
        result = [brush(mask, width=50)]
    elif result == "no-size":
        region = brush(mask)
        del region["original_width"]
        result = [region]
    good, bad = corrections_from_webhook(body(1, 2, result))
    assert not good and len(bad) == 1 and reason in bad[0].reason and bad[0].task_id == 2


def test_bulk_event_keeps_the_good_and_rejects_the_bad(mask):
    event = {"action": "ANNOTATIONS_CREATED", "project": {"id": 7, "label_config": CONFIG},
             "annotation": [{"id": 1, "task": 2, "result": [brush(mask)]}, {"id": 3, "task": 4, "result": []}],
             "task": [{"id": 4, "data": {"image": "http://x/4.png"}}, {"id": 2, "data": {"image": "http://x/2.png"}}]}
    good, bad = corrections_from_webhook(event)
    assert [c.task_id for c in good] == [2] and [r.task_id for r in bad] == [4]


def test_export_uses_the_latest_annotation_per_task(mask):
    other = np.zeros_like(mask)
    other[0:5, 0:5] = True
    tasks = [{"id": 2, "data": {"image": "http://x/2.png"}, "annotations": [
        {"id": 1, "updated_at": "2026-01-01T00:00:00Z", "result": [brush(mask)]},
        {"id": 5, "updated_at": "2026-02-01T00:00:00Z", "result": [brush(other)]},
        {"id": 6, "updated_at": "2026-03-01T00:00:00Z", "result": [brush(mask)], "was_cancelled": True}]},
        {"id": 3, "data": {"image": "http://x/3.png"}, "annotations": []}]
    good, bad = corrections_from_tasks(tasks, CONFIG, project=7)
    assert not bad and [c.annotation_id for c in good] == [5] and np.array_equal(good[0].mask(), other)


def test_store_survives_a_restart_and_forgets_deleted(tmp_path, mask):
    good, _ = corrections_from_webhook(body(1, 2, [brush(mask)]))
    more, _ = corrections_from_webhook(body(3, 4, [brush(mask)]))
    store = CorrectionStore(tmp_path)
    assert store.record(good) == {7: 1} and store.record(more) == {7: 2}
    again = CorrectionStore(tmp_path)  # a new process
    assert [c.annotation_id for c in again.corrections(7)] == [1, 3]
    assert not again.claim_round(7, 3)  # the counter (2) survived the restart: 3 are not waiting yet
    assert np.array_equal(again.corrections(7)[0].mask(), mask)
    assert again.delete_annotations([1]) == 1 and again.delete_tasks([4]) == 1 and again.corrections() == []
    again.training_started(7)
    assert again.record(good) == {7: 1}  # counted from zero again


def test_webhook_records_rejects_and_deletes(make_settings, mask):
    settings = make_settings(SEGAGENT_TRAIN_EVERY="0")
    started = time.perf_counter()
    reply = handle_webhook(body(1, 2, [brush(mask)]), settings)
    assert time.perf_counter() - started < 0.5
    assert reply["recorded"] == [1] and reply["rejected"] == []
    reply = handle_webhook(body(2, 3, []), settings)
    assert reply["recorded"] == [] and "no brush region" in reply["rejected"][0]["reason"]
    store = CorrectionStore.from_settings(settings)
    assert [c.annotation_id for c in store.corrections()] == [1]
    assert store.rejected()[0]["task_id"] == 3 and "no brush region" in store.rejected()[0]["reason"]
    # an update overwrites, it does not duplicate
    handle_webhook(body(1, 2, [brush(~mask)], action="ANNOTATION_UPDATED"), settings)
    assert len(store.corrections()) == 1 and np.array_equal(store.corrections()[0].mask(), ~mask)
    reply = handle_webhook({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}], "project": {"id": 7}}, settings)
    assert reply["removed"] == 1 and store.corrections() == []
    # an update that erases the mask forgets the version recorded before
    handle_webhook(body(1, 2, [brush(mask)]), settings)
    reply = handle_webhook(body(1, 2, [], action="ANNOTATION_UPDATED"), settings)
    assert reply["rejected"][0]["annotation"] == 1 and store.corrections() == []


def test_every_n_corrections_start_one_round(make_settings, mask):
    settings = make_settings(SEGAGENT_TRAIN_EVERY="2", SEGAGENT_POLICY="/some/base")
    rounds = []

    def start(project, data_from):
        rounds.append((project, data_from))
        return {"run": f"r{len(rounds)}"}

    assert "training" not in handle_webhook(body(1, 2, [brush(mask)]), settings, start_training=start)
    reply = handle_webhook(body(2, 3, [brush(mask)]), settings, start_training=start)
    assert rounds == [(7, "corrections")] and reply["training"][0]["run"] == "r1"
    assert "training" not in handle_webhook(body(3, 4, [brush(mask)]), settings, start_training=start)
    reply = handle_webhook({"action": "START_TRAINING", "project": {"id": 7}}, settings, start_training=start)
    assert rounds[-1] == (7, "corrections") and reply["training"]["started"]


def test_start_training_without_a_base_policy_starts_nothing(make_settings):
    settings = make_settings()
    reply = handle_webhook({"action": "START_TRAINING", "project": {"id": 7}}, settings,
                           start_training=lambda p, s: pytest.fail("must not start"))
    assert not reply["training"]["started"] and "SEGAGENT_POLICY" in reply["training"]["note"]


def test_a_big_bulk_event_is_answered_fast_and_checked_when_a_round_loads_it(make_settings, monkeypatch, mask,
                                                                             media_server):
    from segagent_backend.labelstudio import annotations
    from segagent_backend.learning import load_samples
    from segagent_backend.wiring import media_loader

    monkeypatch.setattr(annotations, "WEBHOOK_DECODE_PIXELS", mask.size)  # room for one mask only
    bad = brush(mask)
    bad["value"]["rle"] = brush(np.zeros_like(mask))["value"]["rle"]  # empty, but not decoded in the request
    event = {"action": "ANNOTATIONS_CREATED", "project": {"id": 7, "label_config": CONFIG},
             "annotation": [{"id": 1, "task": 2, "result": [brush(mask)]}, {"id": 3, "task": 4, "result": [bad]}],
             "task": [{"id": 2, "data": {"image": "http://x/2.png"}}, {"id": 4, "data": {"image": "http://x/4.png"}}]}
    good, rejected = corrections_from_webhook(event)
    assert [c.annotation_id for c in good] == [1, 3] and not rejected  # the second mask was not decoded
    good[1].image_url = f"{media_server}/disk.png"
    samples, rejected = load_samples(media_loader(make_settings()), good[1:])
    assert samples == [] and rejected[0].reason == "the brush mask is empty"


def test_only_one_of_two_racing_processes_claims_the_round(tmp_path, mask):
    good, _ = corrections_from_webhook(body(1, 2, [brush(mask)]))
    a, b = CorrectionStore(tmp_path), CorrectionStore(tmp_path)  # two web processes, one MODEL_DIR
    a.record(good)
    b.record(good)
    assert [a.claim_round(7, 2), b.claim_round(7, 2)] == [True, False]
    assert a.record(good) == {7: 1}  # the claim set the counter back to zero


def test_rle_header_is_checked_before_decoding():
    from segagent_backend.labelstudio.brush import AnnotationError, check_rle, decode_brush

    with pytest.raises(AnnotationError, match="header claims 4294967295"):
        decode_brush([255, 255, 255, 255] + [0] * 20, 640, 480)
    with pytest.raises(AnnotationError, match="0..255"):
        check_rle([0, 0, 4, 176, 300, 1], 10, 30)
    with pytest.raises(AnnotationError, match="more than"):
        check_rle([0, 0, 4, 176] + [0] * 10_000, 10, 30)  # 1200 values cannot take 10 KB
    with pytest.raises(AnnotationError, match="above"):
        check_rle([0, 0, 0, 0, 0], 100_000, 100_000)


@pytest.mark.parametrize("bad_id", ["../x", "a\x00", "x" * 300, {"a": 1}, -1, True, 2**64])
def test_ids_that_are_not_ids_never_name_a_file(tmp_path, mask, bad_id):
    from segagent_backend.labelstudio.annotations import Correction

    good, bad = corrections_from_webhook(body(bad_id, 2, [brush(mask)]))
    assert not good and "positive integer" in bad[0].reason and bad[0].annotation_id is None
    store = CorrectionStore(tmp_path)
    with pytest.raises(ValueError):
        store.record([Correction(7, 2, bad_id, "u", "e", [], 1, 1)])
    with pytest.raises(ValueError):
        store.record([Correction(bad_id, 2, 5, "u", "e", [], 1, 1)])
    assert store.delete_annotations([bad_id]) == 0
    assert not any(p.name.startswith("a") for p in tmp_path.rglob("*.json"))
