"""``segagent eval``: the metric definitions, the RefCOCO/SegAgent reader and prediction layout, the per-step
trajectory rebuilt from the loop, a tiny policy end to end, NoC run to run, and the user's mistakes."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from segagent_backend.agent.engine import EpisodeRequest
from segagent_backend.agent.loop import LoopConfig, run_episodes
from segagent_backend.agent.metrics import iou
from segagent_backend.agent.policies.base import Policy
from segagent_backend.agent.protocol import Answer
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Click
from segagent_backend.cli import main
from tests.conftest import make_disk_image
from trainer.datasets import Sample, default_grabcut_dir
from trainer.eval_run import EvalItem, evaluate, summarize_run
from trainer.prm_quality import prm_quality, rank_average
from trainer.refseg import (decode_segmentation, prediction_record, read_refs, refs_from_json, release_selection,
                            score_predictions)
from trainer.traces import mask_to_rle


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a 0-run."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


# --- metric definitions on hand-made cases ---------------------------------------------------

def test_polygons_and_both_rles_decode_to_the_same_mask():
    polygon = [[2.0, 3.0, 11.0, 3.0, 11.0, 8.0, 2.0, 8.0]]  # x, y pairs: a rectangle
    mask = decode_segmentation(polygon, 12, 16)
    assert mask.shape == (12, 16) and mask.dtype == bool and mask[5, 6] and not mask[0, 0] and not mask[5, 14]
    assert np.array_equal(decode_segmentation(mask_to_rle(mask), 12, 16), mask)
    assert np.array_equal(decode_segmentation(_uncompressed_rle(mask), 12, 16), mask)
    assert not decode_segmentation(None, 12, 16).any()
    with pytest.raises(ValueError, match="the entry says 20x12"):
        decode_segmentation(mask_to_rle(mask), 12, 20)


def test_every_sentence_is_a_sample_and_nothing_is_truncated(tmp_path):
    rle = mask_to_rle(np.ones((4, 4), bool))
    data = {"data": [{"image_name": "a", "height": 4, "width": 4, "gt_ann": {"caption": ["x", "y", "z"], "segmentation": rle}},
                     {"image_name": 42, "height": 4, "width": 4, "gt_ann": {"caption": "w", "segmentation": rle}}]}
    entries = refs_from_json(data)
    assert [(e.image_name, e.caption, e.name) for e in entries] == [
        ("a.jpg", "x", "a#0.0"), ("a.jpg", "y", "a#0.1"), ("a.jpg", "z", "a#0.2"),
        ("COCO_train2014_000000000042.jpg", "w", "COCO_train2014_000000000042#1.0")]
    assert len(refs_from_json(data, limit=2)) == 2
    # the release stops after 5000 samples: this reader never does
    many = {"data": [{"image_name": f"i{i}.png", "height": 4, "width": 4,
                      "gt_ann": {"caption": ["a", "b"], "segmentation": rle}} for i in range(2600)]}
    (tmp_path / "many.json").write_text(json.dumps(many))
    assert len(read_refs(tmp_path / "many.json")) == 5200 and len(read_refs(tmp_path / "many.json", limit=5001)) == 5001


def test_ciou_and_giou_as_the_paper_defines_them():
    """A: IoU 2/4; B: empty prediction and empty object (union 0) counts 1.0; C: IoU 0/6.
    cIoU = (2 + 0 + 0) / (4 + 0 + 6) = 0.2; gIoU = (0.5 + 1 + 0) / 3 = 0.5."""
    def record(pred, gt):
        h, w = gt.shape
        return prediction_record("x.png", "it", h, w, mask_to_rle(gt), [pred], [Click(0, 0)], ["Current IOU: 50  Positive point: (0, 0)"])

    gt_a = np.zeros((2, 4), bool)
    gt_a[0, :3] = True
    pred_a = np.zeros((2, 4), bool)
    pred_a[0, 1:4] = True  # inter 2, union 4
    gt_c, pred_c = np.zeros((2, 4), bool), np.zeros((2, 4), bool)
    gt_c[0, :3], pred_c[1, :3] = True, True  # inter 0, union 6
    empty = np.zeros((2, 4), bool)
    scores = score_predictions([record(pred_a, gt_a), record(empty, empty), record(pred_c, gt_c)])
    assert scores["ious"] == [0.5, 1.0, 0.0]
    assert scores["ciou"] == pytest.approx(0.2) and scores["giou"] == pytest.approx(0.5)


def test_prm_quality_mae_pearson_and_spearman_with_ties():
    assert rank_average(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    pairs = [(0.10, 0.01), (0.20, 0.03), (0.20, 0.02), (0.40, 0.04)]  # (estimate, true), 0..1
    q = prm_quality(pairs)
    assert q["pairs"] == 4
    assert q["mae"] == pytest.approx((9 + 17 + 18 + 36) / 4)  # x 100
    est, true = np.array([10, 20, 20, 40.0]), np.array([1, 3, 2, 4.0])
    assert q["pearson"] == pytest.approx(np.corrcoef(est, true)[0, 1])
    # ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]: covariance 4.5 / sqrt(4.5 * 5)
    assert q["spearman"] == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert np.isnan(prm_quality([(0.5, 0.5)])["pearson"]) and prm_quality([])["pairs"] == 0


def test_the_release_reader_selects_as_the_release_does():
    def rec(*outputs):
        return {"pred_list": [{"outputs": o} for o in outputs]}

    # estimates 0, 70, 90, 40: argmax i = 2 -> the mask after click 2 = pred_list[1]
    assert release_selection(rec("Current IOU: 0  Positive point: (1, 2)", "Current IOU: 70  Negative point: (1, 2)",
                                 "Current IOU: 90  Positive point: (1, 2)", "Current IOU: 40  Positive point: (1, 2)")) == 1
    assert release_selection(rec("Current IOU: 0  Positive point: (1, 2)", "Current IOU: 0  Positive point: (1, 2)")) == 0
    assert release_selection(rec("Current IOU: 0  P", "garbage", "Current IOU: 80  P")) == 0  # one unreadable: all 0
    assert release_selection(rec()) is None


# --- the per-step trajectory, rebuilt from the loop -------------------------------------------

class ScriptedPolicy(Policy):
    """Answers step t with ``script[t]``: (estimate 0..1, click or None); a None click is a malformed answer."""

    kind = "scripted"

    def __init__(self, script):
        super().__init__()
        self.script = script

    def propose(self, observations, k=1):
        out = []
        for obs in observations:
            estimate, click = self.script[min(obs.step, len(self.script) - 1)]
            if click is None:
                out.append([Answer(None, None, "no idea", malformed=True)] * k)
                continue
            text = f"<ref>{obs.expression}</ref> Current IOU: {round(100 * estimate)}  Positive point: ({click.y}, {click.x})"
            out.append([Answer(click, estimate, text)] * k)
        return out


@pytest.fixture(scope="module")
def disk():
    image, mask = make_disk_image(width=96, height=72, centre=(48, 36), radius=18)
    return Sample("disk", image, mask, np.zeros_like(mask), "the red disk", ("the red disk",), "disk.png")


SCRIPT = [(0.0, Click(48, 36)), (0.7, Click(40, 30)), (0.9, Click(56, 42)), (0.5, Click(48, 50))]


@pytest.mark.parametrize("protocol", ["release", "extended"])
def test_the_trajectory_matches_the_loop(disk, protocol):
    config = LoopConfig(max_steps=3, protocol=protocol, stop_iou=0.99, patience=5)
    run = evaluate(ScriptedPolicy(SCRIPT), GrabCutSegmenter(), [EvalItem("disk", disk.expression, "disk.png", lambda: disk)], config)
    (r,) = run.results
    direct = run_episodes(ScriptedPolicy(SCRIPT), GrabCutSegmenter(), [EpisodeRequest(disk.image, disk.expression)], config)[0]
    assert r.iou == pytest.approx(iou(direct.mask, disk.gt))  # the watched run returns what the loop returns
    assert len(r.step_ious) == len(r.selected_ious) == 3
    assert r.clicks == 3 and len(r.record["pred_list"]) == 3  # the release's last click is made too
    assert r.selected_ious[-1] == pytest.approx(r.iou)  # the rule after all steps = the mask returned
    # estimates 0, .7, .9 (, .5): both rules pick the mask after 2 clicks
    assert r.iou == pytest.approx(r.step_ious[1])
    assert r.selected_ious[0] == pytest.approx(r.step_ious[0])
    assert [p[0] for p in r.prm] == ([0.0, 0.7, 0.9] if protocol == "release" else [0.0, 0.7, 0.9, 0.5])
    assert r.calls == (3 if protocol == "release" else 4) and r.malformed == 0
    pred = r.record["pred_list"]
    assert [p["click_id"] for p in pred] == [0, 1, 2]
    assert pred[0]["clicks"] == {"is_positive": True, "coords": [36, 48]} and pred[0]["outputs"].startswith("<ref>the red disk")
    assert set(r.record) >= {"img_path", "height", "width", "caption", "gt_mask", "pred_list", "outputs"}
    if protocol == "release":  # the release's reader picks the same mask from the written predictions
        assert score_predictions([r.record])["ious"] == [pytest.approx(r.iou)]


class TwoCandidates(Policy):
    """Tree search: two clicks per node; a mask's estimate grows with the x of its last click (a made-up PRM)."""

    kind = "two"

    def propose(self, observations, k=1):
        out = []
        for obs in observations:
            estimate = 0.0 if not obs.clicks else min(0.99, obs.clicks[-1].x / 100)
            clicks = [Click(40 + 4 * obs.step, 36), Click(52 + 3 * obs.step, 30 + obs.step, obs.step % 2 == 0)]
            out.append([Answer(c, estimate, f"Current IOU: {round(100 * estimate)}  Positive point: (0, 0)")
                        for c in clicks[:k]])
        return out


def test_tree_search_is_rebuilt_as_the_loop_chose(disk):
    config = LoopConfig(max_steps=3, candidates=2, protocol="extended", stop_iou=0.99, patience=5)
    run = evaluate(TwoCandidates(), GrabCutSegmenter(), [EvalItem("disk", disk.expression, "disk.png", lambda: disk)], config)
    (r,) = run.results
    direct = run_episodes(TwoCandidates(), GrabCutSegmenter(), [EpisodeRequest(disk.image, disk.expression)], config)[0]
    assert r.iou == pytest.approx(iou(direct.mask, disk.gt)) and r.selected_ious[-1] == pytest.approx(r.iou)
    assert [c["clicks"]["coords"] for c in r.record["pred_list"]] == [[round(s.click.y), round(s.click.x)]
                                                                      for s in direct.trajectory]
    assert len(r.prm) == 1 + 2 * 3  # the root, then two children judged per step


def test_a_malformed_answer_ends_the_episode_and_the_last_mask_carries(disk):
    config = LoopConfig(max_steps=3, protocol="release")
    run = evaluate(ScriptedPolicy([(0.0, Click(48, 36)), (0.6, None)]), GrabCutSegmenter(),
                   [EvalItem("disk", disk.expression, "disk.png", lambda: disk)] * 2, config, batch=2)
    s = summarize_run(run.results, config, run.seconds)
    assert s["samples"] == 2 and s["answers"] == 4 and s["malformed_answers"] == 2 and s["malformed_rate"] == 0.5
    r = run.results[0]
    assert r.clicks == 1 and r.step_ious[0] == r.step_ious[1] == r.step_ious[2]
    assert s["mean_clicks"] == 1.0 and s["mean_calls"] == 2.0 and not s["truncated"]


# --- end to end through the CLI ---------------------------------------------------------------

def _write_png(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture
def refs(tmp_path, monkeypatch):
    """Three tiny images (a disk, a square, a disk) in the RefCOCO layout: RLE, polygons, uncompressed RLE;
    the first object has two sentences (4 samples)."""
    tmp_path = tmp_path / "refs"
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("SEGAGENT_SEGMENTER", "grabcut")
    (tmp_path / "images").mkdir(parents=True)
    rows = []
    for n, (centre, radius) in enumerate((((30, 24), 12), ((40, 30), 0), ((20, 20), 10))):
        image, mask = make_disk_image(width=64, height=48, centre=centre, radius=radius or 1)
        if radius == 0:  # a square drawn as a polygon
            mask = np.zeros((48, 64), bool)
            mask[20:36, 30:50] = True
            image[mask] = (40, 40, 200)
            segmentation = [[30, 20, 50, 20, 50, 36, 30, 36]]
        else:
            segmentation = mask_to_rle(mask) if n == 0 else _uncompressed_rle(mask)
        _write_png(tmp_path / "images" / f"im{n}.png", image)
        rows.append({"image_name": f"im{n}.png", "height": 48, "width": 64,
                     "gt_ann": {"caption": ["the red disk", "the round thing"] if n == 0 else [f"object {n}"],
                                "segmentation": segmentation}})
    (tmp_path / "refs.json").write_text(json.dumps({"data": rows}))
    return tmp_path


@pytest.mark.usefixtures("one_torch_thread")
def test_eval_of_a_tiny_policy_on_refcoco_layout_data(refs, tiny_qwen2_vl, monkeypatch, capsys):
    monkeypatch.setenv("SEGAGENT_POLICY", str(tiny_qwen2_vl))
    monkeypatch.setenv("SEGAGENT_DECODING", "grammar")  # a random model decoding freely never clicks
    out = refs / "out"
    code = main(["eval", "--refs", str(refs / "refs.json"), "--images", str(refs / "images"), "--out", str(out),
                 "--protocol", "release", "--max-steps", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "4 samples, release protocol, grammar decoding, 2 steps, ours scoring: cIoU" in captured.out
    assert "PRM (IoU x 100" in captured.out
    for name in ("summary.json", "samples.csv", "steps.csv", "predictions.json", "iou_per_step.png"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    assert s["samples"] == 4 and 0.0 <= s["ciou"] <= 1.0 and 0.0 <= s["giou"] <= 1.0
    assert s["per_step"]["step"] == [1, 2] and len(s["per_step"]["iou_after_step"]) == 2
    assert len(s["per_step"]["iou_selected"]) == 2 and s["protocol"] == "release" and s["truncated"] is False
    assert set(s["prm"]) >= {"pairs", "mae", "pearson", "spearman"} and s["prm"]["pairs"] >= 4
    assert s["prm_after_clicks"]["pairs"] < s["prm"]["pairs"]
    assert 0.0 <= s["malformed_rate"] <= 1.0 and s["seconds_per_sample"] > 0
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["caption"] for p in preds] == [["the red disk"], ["the round thing"], ["object 1"], ["object 2"]]
    assert preds[1]["gt_mask"] == json.loads((refs / "refs.json").read_text())["data"][0]["gt_ann"]["segmentation"]
    for p in preds:
        assert p["img_path"].startswith("im") and p["height"] == 48 and p["width"] == 64
        for i, step in enumerate(p["pred_list"]):
            assert step["click_id"] == i and set(step["clicks"]) == {"is_positive", "coords"}
            assert decode_segmentation(step["mask"], 48, 64).shape == (48, 64) and isinstance(step["outputs"], str)
    with open(out / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["im0#0.0", "im0#0.1", "im1#1.0", "im2#2.0"]
    assert np.mean([float(r["iou"]) for r in rows]) == pytest.approx(s["giou"], abs=1e-5)
    png = cv2.imread(str(out / "iou_per_step.png"))
    assert png is not None and png.shape[:2] == (480, 800)
    # the written predictions read back as the release's reader reads them
    assert main(["eval", "--predictions", str(out / "predictions.json"), "--out", str(refs / "scored")]) == 0
    assert "4 of 4 records, ours scoring, 4 scored, 0 dropped (no click) (the release's mask selection): cIoU" \
        in capsys.readouterr().out
    scored = json.loads((refs / "scored" / "scores.json").read_text())
    assert scored["samples"] == 4 and 0.0 <= scored["ciou"] <= 1.0


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Three synthetic images + masks and a manifest in the GrabCut layout (rows name/image/mask/expression)."""
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SEGAGENT_SEGMENTER", "grabcut")
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    rows = []
    for name, centre, radius in (("a", (28, 22), 10), ("b", (18, 15), 7), ("c", (36, 26), 8)):
        image, mask = make_disk_image(width=56, height=44, centre=centre, radius=radius)
        _write_png(tmp_path / "images" / f"{name}.png", image)
        trimap = mask.astype(np.uint8) * 255
        trimap[cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask] = 128  # ignore band
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), trimap)
        rows.append({"name": name, "image": f"images/{name}.png", "mask": f"masks/{name}.png", "expression": f"disk {name}"})
    (tmp_path / "manifest.json").write_text(json.dumps(rows))
    return tmp_path


def test_a_folder_with_an_ignore_band_scores_the_same_from_the_predictions(folder):
    from trainer.datasets import load_folder
    from trainer.eval_run import items_from_samples

    items = items_from_samples(load_folder(folder, folder, folder / "manifest.json"))
    assert [(i.name, i.caption, i.image_file) for i in items] == [
        ("a", "disk a", "images/a.png"), ("b", "disk b", "images/b.png"), ("c", "disk c", "images/c.png")]
    script = [(0.0, Click(28, 22)), (0.8, Click(18, 15)), (0.3, Click(36, 26))]
    run = evaluate(ScriptedPolicy(script), GrabCutSegmenter(), items, LoopConfig(max_steps=2, protocol="release"))
    assert all("ignore" in r.record for r in run.results)
    scores = score_predictions([r.record for r in run.results])
    assert scores["ious"] == pytest.approx([r.iou for r in run.results])
    assert scores["ciou"] == pytest.approx(run.summary()["ciou"])


def test_noc_is_the_same_run_to_run(folder, capsys):
    results = []
    for n in range(2):
        out = folder / f"noc{n}"
        assert main(["eval", "--noc", "--manifest", str(folder / "manifest.json"), "--out", str(out), "--no-progress"]) == 0
        printed = capsys.readouterr().out
        assert "3 images, grabcut, 20 clicks: NoC@85" in printed and "NoC@90" in printed
        assert "mean IoU after k clicks: 1:" in printed and "clicks that lowered IoU:" in printed
        results.append(json.loads((out / "noc.json").read_text()))
        assert (out / "noc.csv").read_text().count("\n") == 4 and cv2.imread(str(out / "noc_iou.png")) is not None
    a, b = results
    assert a["per_image"] == b["per_image"] and a["noc85"] == b["noc85"] and a["noc90"] == b["noc90"]
    assert len(a["miou_after_click"]) == 20 and all(len(v) == 20 for v in a["per_image"].values())
    assert 1.0 <= a["noc85"] <= 20.0


def test_noc_on_refcoco_layout_data_counts_each_object_once(refs, capsys):
    out = refs / "noc"
    assert main(["eval", "--noc", "--refs", str(refs / "refs.json"), "--images", str(refs / "images"), "--limit", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert "2 images, grabcut, 20 clicks" in capsys.readouterr().out
    assert list(json.loads((out / "noc.json").read_text())["per_image"]) == ["im0#0.0", "im1#1.0"]


def test_noc_on_the_grabcut_set(tmp_path, monkeypatch, capsys):
    root = default_grabcut_dir()
    if not (root / "manifest.json").is_file():
        pytest.skip(f"GrabCut set absent at {root} (set SEGAGENT_GRABCUT_DIR)")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SEGAGENT_SEGMENTER", "grabcut")
    monkeypatch.setenv("SEGAGENT_GRABCUT_MAX_SIDE", "96")  # plumbing only: a coarse, fast GrabCut
    assert main(["eval", "--noc", "--manifest", str(root / "manifest.json"), "--limit", "2", "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "noc.json").read_text())
    assert summary["samples"] == 2 and 1.0 <= summary["noc90"] <= 20.0


# --- the user's mistakes: one line, exit status 2 ----------------------------------------------

def test_user_errors_are_one_line_and_exit_2(folder, refs, capsys, monkeypatch):
    def fails(args, expected):
        assert main(["eval"] + args + ["--out", str(folder / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("segagent eval: ") and expected in err, err

    fails(["--noc", "--manifest", str(folder / "nope.json")], "--manifest")
    fails(["--noc", "--manifest", str(folder / "nope.json")], "no such file")
    (folder / "bad.json").write_text("{not json")
    fails(["--refs", str(folder / "bad.json"), "--images", str(refs / "images")], "not JSON")
    fails(["--refs", str(refs / "refs.json")], "--refs needs --images")
    (folder / "wrong.json").write_text(json.dumps({"data": [{"image_name": "x.png", "height": 4, "width": 4, "gt_ann": {}}]}))
    fails(["--refs", str(folder / "wrong.json"), "--images", str(refs / "images")], "data[0]: missing")
    monkeypatch.delenv("SEGAGENT_POLICY", raising=False)
    fails(["--refs", str(refs / "refs.json"), "--images", str(refs / "images")], "SEGAGENT_POLICY")
    monkeypatch.setenv("SEGAGENT_POLICY", str(folder / "no-model"))
    fails(["--refs", str(refs / "refs.json"), "--images", str(folder / "images")], "not in")  # images elsewhere
    assert not (folder / "o").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_eval_scores_the_text_start_and_starts_the_policy_there(refs, tiny_qwen2_vl, tiny_sam3_text, monkeypatch,
                                                                 capsys):
    """With SEGAGENT_TEXT_MODEL, every episode starts from SAM 3's instance (as automatic predictions do) and the
    summary scores those starts apart from the final masks."""
    monkeypatch.setenv("SEGAGENT_POLICY", str(tiny_qwen2_vl))
    monkeypatch.setenv("SEGAGENT_TEXT_MODEL", str(tiny_sam3_text))
    monkeypatch.setenv("SEGAGENT_TEXT_THRESHOLD", "0")
    out = refs / "out-text"
    code = main(["eval", "--refs", str(refs / "refs.json"), "--images", str(refs / "images"), "--out", str(out),
                 "--protocol", "extended", "--max-steps", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "SAM 3 text start (before the policy's clicks): cIoU" in captured.out
    s = json.loads((out / "summary.json").read_text())
    assert s["text_model"] == str(tiny_sam3_text) and s["text_start"]["grounded"] == 1.0, (captured.out, s["text_start"])
    assert 0.0 <= s["text_start"]["ciou"] <= 1.0 and 0.0 <= s["text_start"]["giou"] <= 1.0
    with open(out / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert np.mean([float(r["start_iou"]) for r in rows]) == pytest.approx(s["text_start"]["giou"], abs=1e-5)
    # one policy click at most after the start (--max-steps 1)
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 4 and all(len(p["pred_list"]) <= 1 for p in preds)


def test_the_start_is_what_the_episode_begins_from(disk):
    """evaluate(start=...): the policy's first observation shows the start mask, and its IoU is scored."""
    seen = []

    class Watching(ScriptedPolicy):
        def propose(self, observations, k=1):
            seen.extend(o.mask.copy() for o in observations if o.step == 0)
            return super().propose(observations, k)

    half = np.zeros_like(disk.gt)
    half[:, : disk.gt.shape[1] // 2] = disk.gt[:, : disk.gt.shape[1] // 2]
    config = LoopConfig(max_steps=2, protocol="extended", stop_iou=0.99, patience=5)
    items = [EvalItem("disk", disk.expression, "disk.png", lambda: disk)] * 2
    found = iter([half, None])
    run = evaluate(Watching(SCRIPT), GrabCutSegmenter(), items, config, batch=2, start=lambda image, text: next(found))
    assert np.array_equal(seen[0], half) and not seen[1].any()
    first, second = run.results
    assert first.start_iou == pytest.approx(iou(half, disk.gt)) and first.grounded
    assert second.start_iou == 0.0 and not second.grounded
    t = summarize_run(run.results, config, run.seconds)["text_start"]
    assert t["grounded"] == 0.5 and t["giou"] == pytest.approx(first.start_iou / 2)


# --- scoring as the release (--release-scoring) ----------------------------------------------------------------

def test_release_scoring_drops_samples_without_a_click_and_reports_both(folder):
    from trainer.datasets import load_folder
    from trainer.eval_run import items_from_samples

    items = items_from_samples(load_folder(folder, folder, folder / "manifest.json"))

    class FailsOnB(ScriptedPolicy):  # sample "b" fails at its first step: the release's pred_list stays empty
        def propose(self, observations, k=1):
            rows = super().propose(observations, k)
            return [[Answer(None, None, "no idea", malformed=True)] * k if o.expression == "disk b" else r
                    for o, r in zip(observations, rows)]

    script = [(0.0, Click(28, 22)), (0.8, Click(18, 15))]
    config = LoopConfig(max_steps=2, protocol="release")
    run = evaluate(FailsOnB(script), GrabCutSegmenter(), items, config, scoring="release")
    s = run.summary()
    clicked = [r for r in run.results if r.clicks > 0]
    assert [r.name for r in run.results if r.clicks == 0] == ["b"] and run.results[1].record["pred_list"] == []
    assert s["scoring"] == "release" and s["samples"] == 3 and s["scored_samples"] == 2 and s["dropped_samples"] == 1
    assert s["scores"]["ours"]["samples"] == 3 and s["scores"]["release"]["dropped"] == 1
    assert s["giou"] == pytest.approx(np.mean([r.iou for r in clicked]))
    assert s["scores"]["ours"]["giou"] == pytest.approx(np.mean([r.iou for r in run.results]))
    # the written predictions, read back by the release's rules, give the same numbers
    again = score_predictions([r.record for r in run.results], release=True)
    assert again["samples"] == 2 and again["dropped"] == 1 and again["ciou"] == pytest.approx(s["ciou"])
    assert again["ious"][1] is None
    ours = evaluate(FailsOnB(script), GrabCutSegmenter(), items, config).summary()
    assert ours["scoring"] == "ours" and ours["ciou"] == pytest.approx(s["scores"]["ours"]["ciou"])


def test_release_scoring_reads_the_first_5000_sentences_without_png_images():
    rows = [{"image_name": name, "height": 4, "width": 4, "gt_ann": {"caption": ["a", "b"], "segmentation": []}}
            for name in ("x.jpg", "y.png", "z")]
    assert [e.image_name for e in refs_from_json(rows)] == ["x.jpg", "x.jpg", "y.png", "y.png", "z.jpg", "z.jpg"]
    assert [e.image_name for e in refs_from_json(rows, skip_png=True)] == ["x.jpg", "x.jpg", "z.jpg", "z.jpg"]
    assert [e.name for e in refs_from_json(rows, 3, skip_png=True)] == ["x#0.0", "x#0.1", "z#2.0"]


def test_release_scoring_on_the_command_line(tmp_path, tiny_qwen2_vl, monkeypatch, capsys):
    import trainer.eval_run

    (tmp_path / "images").mkdir()
    rows = []
    for n in range(3):
        image, mask = make_disk_image(width=64, height=48, centre=(30 + n, 24), radius=10)
        cv2.imwrite(str(tmp_path / "images" / f"im{n}.jpg"), image[:, :, ::-1])
        rows.append({"image_name": f"im{n}.jpg", "height": 48, "width": 64,
                     "gt_ann": {"caption": [f"object {n}"], "segmentation": mask_to_rle(mask)}})
    rows.insert(1, dict(rows[0], image_name="skipped.png"))  # the release's loader skips it
    (tmp_path / "refs.json").write_text(json.dumps({"data": rows}))
    monkeypatch.setattr(trainer.eval_run, "RELEASE_MAX_SAMPLES", 2)  # the release's 5000, made small
    monkeypatch.setenv("SEGAGENT_POLICY", str(tiny_qwen2_vl))
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    out = tmp_path / "out"
    code = main(["eval", "--refs", str(tmp_path / "refs.json"), "--images", str(tmp_path / "images"), "--out", str(out),
                 "--protocol", "release", "--max-steps", "1", "--no-progress", "--release-scoring"])
    printed = capsys.readouterr().out
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["img_path"] for p in preds] == ["im0.jpg", "im1.jpg"]  # .png skipped, then the first 2
    assert s["scoring"] == "release" and s["samples"] == 2 and s["truncated"] is True and s["truncated_samples"] == 1
    assert s["decoding"] == "free"  # the release protocol decodes freely by default
    no_click = sum(not p["pred_list"] for p in preds)
    assert s["dropped_samples"] == no_click and s["scored_samples"] == 2 - no_click
    assert s["scores"]["ours"]["samples"] == 2
    assert "(the first 2: 1 left out), release protocol, free decoding, 1 steps, release scoring" in printed
    assert f"release: {2 - no_click} scored, {no_click} dropped (no click)" in printed
