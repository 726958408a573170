"""The learning loop in one process: annotation webhooks -> a training round -> evaluation on held-out
tasks -> promotion only if not worse -> /predict answers with the new version. Real tiny Qwen2-VL
trained by the real trainer, real GrabCut, images over real HTTP."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from segagent_backend.learning import list_reports, run_training
from segagent_backend.registry import Registry
from tests.service.payloads import CONFIG, predict_body

# a round that memorises one-click trajectories of the disk image in ~30 optimizer steps
FAST_ROUND = {"SEGAGENT_TRAIN_METHOD": "full", "SEGAGENT_TRAIN_LR": "0.003", "SEGAGENT_TRAIN_EPOCHS": "40", "SEGAGENT_TRAIN_BATCH": "2",
              "SEGAGENT_HOLDOUT": "0.34", "SEGAGENT_MAX_STEPS": "2", "DEVICE": "cpu"}


@pytest.fixture(scope="module")
def base_policy(tiny_qwen2_vl):
    return tiny_qwen2_vl  # shared read-only: rounds train into MODEL_DIR and register copies


def annotation_event(task_id: int, image_url: str, mask: np.ndarray, action: str = "ANNOTATION_CREATED") -> dict:
    h, w = mask.shape
    region = {"id": f"r{task_id}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
              "original_width": w, "original_height": h,
              "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Banana"]}}
    return {"action": action, "project": {"id": 3, "label_config": CONFIG},
            "annotation": {"id": 100 + task_id, "task": task_id, "result": [region]},
            "task": {"id": task_id, "data": {"image": image_url, "expression": "the red disk"}}}


def wait_for_round(settings, count: int = 1, timeout: float = 240):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = [r for r in list_reports(settings) if r.status != "running"]
        if len(done) >= count:
            return done[-1]
        time.sleep(0.5)
    pytest.fail(f"no training round finished in {timeout} s: {list_reports(settings)}")


def test_webhooks_train_evaluate_promote_and_predict_with_the_new_version(make_settings, base_policy, media_server,
                                                                          disk_image):
    from segagent_backend.app import create_app

    settings = make_settings(SEGAGENT_POLICY=base_policy, SEGAGENT_TRAIN_EVERY="3", **FAST_ROUND)
    client = create_app(settings).test_client()
    url = f"{media_server}/disk.png"
    before = client.post("/predict", json=predict_body(url, None)).json["results"][0]["model_version"]
    replies = [client.post("/webhook", json=annotation_event(t, url, disk_image[1])).json for t in (1, 2, 3)]
    assert [r["recorded"] for r in replies] == [[101], [102], [103]]
    assert "training" not in replies[1] and replies[2]["training"][0]["started"]  # the 3rd correction starts a round

    report = wait_for_round(settings)
    assert report.status == "promoted", report
    assert report.counts["usable"] == 3 and report.counts["held_out"] == 1 and report.counts["train"] == 2
    candidate, current = report.metrics["candidate"], report.metrics["current"]
    assert candidate["miou"] >= current["miou"] and candidate["ciou"] >= current["ciou"]
    meta = json.loads((settings.model_dir / "versions" / report.version / "meta.json").read_text())
    assert meta["base"] == str(base_policy) and meta["metrics"]["candidate"] == candidate
    assert meta["counts"]["train"] == 2 and meta["data"]["project"] == 3

    reply = client.post("/predict", json=predict_body(url, None)).json["results"][0]
    assert reply["model_version"] == report.version != before  # served without a restart
    assert any(r["type"] == "brushlabels" for r in reply["result"])
    setup = client.post("/setup", json={"schema": CONFIG, "project": "3.1"}).json
    assert setup["model_version"] == report.version
    health = client.get("/health").json
    assert health["training"] == {"run": report.run, "status": "promoted", "reason": report.reason,
                                  "version": report.version}


def test_a_worse_candidate_is_kept_not_promoted(make_settings, base_policy, media_server, disk_image):
    from segagent_backend.corrections import CorrectionStore
    from segagent_backend.labelstudio.annotations import corrections_from_webhook

    url = f"{media_server}/disk.png"
    good = make_settings(SEGAGENT_POLICY=base_policy, **FAST_ROUND)
    store = CorrectionStore.from_settings(good)
    store.record([c for t in (1, 2, 3) for c in corrections_from_webhook(annotation_event(t, url, disk_image[1]))[0]])
    first = run_training(good, 3)
    assert first.status == "promoted"
    # the same data, but a round that barely trains: the candidate stays as bad as the random base
    weak = good.replace(train_lr=1e-9, train_epochs=1)
    second = run_training(weak, 3)
    assert second.status == "kept" and "worse than the serving policy" in second.reason, second
    assert Registry.from_settings(good).current().version == first.version  # the serving version is untouched
    forced = run_training(weak.replace(force_promote=True), 3)
    assert forced.status == "promoted" and "forced" in forced.reason
    assert Registry.from_settings(good).current().version == forced.version


def test_a_failed_round_is_reported_and_changes_nothing(make_settings, base_policy, media_server, disk_image):
    from segagent_backend.corrections import CorrectionStore
    from segagent_backend.labelstudio.annotations import corrections_from_webhook

    settings = make_settings(SEGAGENT_POLICY=base_policy, **FAST_ROUND)
    events = [annotation_event(1, f"{media_server}/disk.png", disk_image[1]),
              annotation_event(2, f"{media_server}/gone.png", disk_image[1]),  # the task's image was deleted
              annotation_event(3, f"{media_server}/disk.png", disk_image[1][:, :100])]  # mask of the wrong size
    CorrectionStore.from_settings(settings).record([c for e in events for c in corrections_from_webhook(e)[0]])
    report = run_training(settings, 3)
    assert report.status == "failed" and "at least 2 usable annotations" in report.reason
    reasons = {r["task_id"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {2, 3} and "100x120" in reasons[3]
    registry = Registry.from_settings(settings)
    assert registry.list_versions() == [] and registry.current().version is None
    assert [r.status for r in list_reports(settings)] == ["failed"]
