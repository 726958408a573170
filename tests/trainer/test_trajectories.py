"""Trajectory generation on the GrabCut set with the GrabCut tool: SegAgent's record_trace rules,
start states, the trace JSON and the SFT samples made from traces."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from tests.conftest import make_disk_image
from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.metrics import iou
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from trainer.datasets import Sample, load_grabcut
from trainer.samples import samples_from_trace
from trainer.traces import read_traces, write_traces
from trainer.trajectories import Timing, box_start, final_iou, generate_traces, random_points_start, record_trace

# chosen so that the three ways a trajectory ends all occur (GrabCut is deterministic):
# 124080 reaches 0.98 with its first click, 106024 ends on a click that does not improve,
# 153077 is still improving when it hits the click limit (with max_clicks=4)
EMPTY_RUNS = {"124080": 20, "106024": 20, "153077": 4}
START_IMAGE = "21077"  # has an ignore band


class Recording:
    """The GrabCut tool, logging every call: (clicks, box, prev_logits, output)."""

    def __init__(self):
        self.tool = GrabCutSegmenter()
        self.calls: list[tuple] = []
        self.images = 0

    def set_image(self, image, digest=None):
        self.images += 1
        self.tool.set_image(image, digest)

    def segment(self, clicks, box=None, prev_logits=None):
        out = self.tool.segment(clicks, box, prev_logits)
        self.calls.append((list(clicks), box, prev_logits, out))
        return out


@pytest.fixture(scope="module")
def samples(grabcut_dir):
    return {s.name: s for s in load_grabcut(grabcut_dir, names=[*EMPTY_RUNS, START_IMAGE])}


@pytest.fixture(scope="module")
def empty_runs(samples):
    runs = []
    for name, max_clicks in EMPTY_RUNS.items():
        s, rec = samples[name], Recording()
        trace = record_trace(rec, s.image, s.gt, s.ignore, [s.expression], s.name, max_clicks=max_clicks)
        runs.append((s, trace, rec, max_clicks))
    return runs


@pytest.fixture(scope="module")
def start_runs(samples):
    s = samples[START_IMAGE]
    out = {}
    for kind in ("box", "points"):
        rec = Recording()
        if kind == "box":
            start = box_start(rec, s.image, s.gt, s.ignore)
        else:
            start = random_points_start(rec, s.image, s.gt, s.ignore, rng=np.random.default_rng(3), positives=2,
                                        negatives=1)
        rec.calls.clear()
        rec.images = 0
        trace = record_trace(rec, s.image, s.gt, s.ignore, [s.expression], s.name, start, max_clicks=2)
        out[kind] = (s, trace, rec)
    return out


def shown_masks(trace):
    """The mask each recorded click was made on."""
    first = trace.start.mask if trace.start is not None else np.zeros_like(trace.gt)
    return [first] + [step.mask for step in trace.steps[:-1]]


def check_rules(sample, trace, rec, max_clicks, target=0.98):
    """Every record_trace rule, checked against the tool's logged calls; returns why it stopped."""
    start_clicks = list(trace.start.clicks) if trace.start is not None else []
    box = trace.start.box if trace.start is not None else None
    ious = [trace.start.iou if trace.start is not None else 0.0] + [st.iou for st in trace.steps]
    assert all(b > a for a, b in zip(ious, ious[1:])), ious  # strictly increasing
    assert rec.images == 1
    made = start_clicks[:]
    for k, (step, shown) in enumerate(zip(trace.steps, shown_masks(trace))):
        assert step.click == next_click(sample.gt, shown, sample.ignore, made)  # the simulator's click
        assert not sample.ignore[int(step.click.y), int(step.click.x)]
        assert step.click.positive == bool(sample.gt[int(step.click.y), int(step.click.x)])
        clicks, called_box, prev_logits, out = rec.calls[k]
        assert clicks == made + [step.click] and called_box == box  # all clicks so far, the start's box
        if k > 0:
            assert prev_logits is rec.calls[k - 1][3].logits  # the previous call's logits
        assert np.array_equal(out.mask, step.mask) and step.mask.dtype == bool
        assert step.iou == pytest.approx(iou(step.mask, sample.gt, sample.ignore))
        made.append(step.click)
    assert trace.clicks == made[len(start_clicks):]  # only the new clicks are recorded
    if trace.steps and trace.steps[-1].iou >= target:
        return "target"
    if len(trace.steps) == max_clicks:
        return "max_clicks"
    # otherwise the next click must not have improved: run it again by hand
    last = trace.steps[-1].mask if trace.steps else shown_masks(trace)[0]
    click = next_click(sample.gt, last, sample.ignore, made)
    if click is None:
        return "no_click"
    logits = rec.calls[len(trace.steps) - 1][3].logits if trace.steps else (trace.start.logits if trace.start else None)
    out = rec.tool.segment(made + [click], box, logits)
    assert iou(out.mask, sample.gt, sample.ignore) <= ious[-1]
    assert len(rec.calls) == len(trace.steps) + 1  # record_trace made that call and stopped
    return "no_improvement"


def test_record_trace_follows_segagent_rules(empty_runs):
    reasons = {}
    for sample, trace, rec, max_clicks in empty_runs:
        reasons[sample.name] = check_rules(sample, trace, rec, max_clicks)
        assert trace.start is None and trace.captions == [sample.expression] and trace.image_name == sample.name
        assert (trace.ignore is not None) == bool(sample.ignore.any())
    assert reasons == {"124080": "target", "106024": "no_improvement", "153077": "max_clicks"}


def test_start_states_keep_their_prompts(start_runs):
    for kind, (sample, trace, rec) in start_runs.items():
        start = trace.start
        assert start.kind == kind and start.mask.shape == sample.gt.shape and start.mask.dtype == bool
        assert start.iou == pytest.approx(iou(start.mask, sample.gt, sample.ignore))
        check_rules(sample, trace, rec, 2)
        assert len(trace.steps) >= 1 and samples_from_trace(trace, sample.image)[0].shown is start.mask
    box = start_runs["box"][1].start
    rows, cols = np.nonzero(start_runs["box"][0].gt)
    assert (box.box.x1, box.box.y1, box.box.x2, box.box.y2) == (cols.min(), rows.min(), cols.max(), rows.max())
    assert box.clicks == []
    sample, trace, _ = start_runs["points"]
    points = trace.start.clicks
    assert [c.positive for c in points] == [True, True, False] and trace.start.box is None
    for c in points:
        assert sample.gt[int(c.y), int(c.x)] == c.positive and not sample.ignore[int(c.y), int(c.x)]


def test_random_points_are_seeded_and_avoid_the_ignore_band():
    image, gt = make_disk_image()
    kernel = np.ones((5, 5), np.uint8)
    ignore = cv2.dilate(gt.astype(np.uint8), kernel) > cv2.erode(gt.astype(np.uint8), kernel)  # a band on the edge
    tool = GrabCutSegmenter()
    a = random_points_start(tool, image, gt, ignore, rng=np.random.default_rng(7), positives=5, negatives=5)
    b = random_points_start(tool, image, gt, ignore, rng=np.random.default_rng(7), positives=5, negatives=5)
    assert a.clicks == b.clicks and len(set(a.clicks)) == 10
    for c in a.clicks:
        assert gt[int(c.y), int(c.x)] == c.positive and not ignore[int(c.y), int(c.x)]
    with pytest.raises(ValueError, match="empty"):
        box_start(tool, image, np.zeros_like(gt))


def test_trace_json_round_trip(empty_runs, start_runs, tmp_path):
    traces = [t for _, t, _, _ in empty_runs] + [t for _, t, _ in start_runs.values()]
    path = tmp_path / "traces.json"
    write_traces(path, traces, {"args": {"seed": 0}})
    back = read_traces(path)
    for a, b in zip(traces, back, strict=True):
        assert (a.image_name, a.captions, a.clicks, [s.iou for s in a.steps]) == \
               (b.image_name, b.captions, b.clicks, [s.iou for s in b.steps])
        assert np.array_equal(a.gt, b.gt) and all(np.array_equal(x.mask, y.mask) for x, y in zip(a.steps, b.steps))
        assert (a.ignore is None) == (b.ignore is None) and (a.ignore is None or np.array_equal(a.ignore, b.ignore))
        if a.start is not None:
            assert (a.start.kind, a.start.clicks, a.start.box) == (b.start.kind, b.start.clicks, b.start.box)
            assert np.array_equal(a.start.mask, b.start.mask) and a.start.iou == b.start.iou
    data = json.loads(path.read_text())
    assert set(data) == {"info", "data"} and data["info"] == {"args": {"seed": 0}}
    release = {"image_name", "height", "width", "gt_ann", "clicks_list"}
    for row, trace in zip(data["data"], traces):
        assert release <= set(row) and set(row) - release <= {"start", "ignore"}
        assert set(row["gt_ann"]) == {"object_id", "caption", "segmentation", "bbox", "area"}
        gt = coco_mask.decode({"size": row["gt_ann"]["segmentation"]["size"],
                               "counts": row["gt_ann"]["segmentation"]["counts"].encode()})
        assert np.array_equal(gt.astype(bool), trace.gt) and row["gt_ann"]["area"] == int(trace.gt.sum())
        for i, (click, step) in enumerate(zip(row["clicks_list"], trace.steps)):
            assert set(click) == {"idx", "coor", "is_positive", "mask", "box", "area", "iou"} and click["idx"] == i
            assert click["coor"] == [int(step.click.y), int(step.click.x)]  # [row, col]
            assert click["is_positive"] == step.click.positive and click["iou"] == step.iou
            rle = {"size": click["mask"]["size"], "counts": click["mask"]["counts"].encode()}
            assert np.array_equal(coco_mask.decode(rle).astype(bool), step.mask)
            assert click["area"] == int(coco_mask.area(rle)) and click["box"] == coco_mask.toBbox(rle).tolist()
    assert set(data["data"][1]) == release  # 106024: empty start, no ignore band: exactly the release's fields


def test_samples_from_trace_one_per_click_and_caption(empty_runs):
    sample, trace, _, _ = next(r for r in empty_runs if len(r[1].steps) >= 3)
    trace = dataclasses.replace(trace, captions=["the first caption", "another way to say it"])
    assert len(samples_from_trace(trace, sample.image)) == 2 * len(trace.steps)  # the release's data: no stop
    out = samples_from_trace(trace, sample.image, stop_sample=True)
    n = len(trace.steps) + 1  # one per click, then the stop on the final mask
    assert len(out) == 2 * n
    h, w = trace.height, trace.width
    shown_ious = [0.0] + [s.iou for s in trace.steps]
    for c, caption in enumerate(trace.captions):
        for t, step in enumerate(trace.steps):
            s = out[c * n + t]
            kind = "Positive" if step.click.positive else "Negative"
            expected = (f"<ref>{caption}</ref> Current IOU: {round(100 * shown_ious[t])}  {kind} point: "
                        f"({round(step.click.y * 1000 / h)}, {round(step.click.x * 1000 / w)})")
            assert s.target == expected and s.expression == caption
            assert np.array_equal(s.shown, shown_masks(trace)[t])
        stop = out[c * n + n - 1]
        assert stop.target == f"<ref>{caption}</ref> Current IOU: {round(100 * trace.steps[-1].iou)}"
        assert stop.shown is trace.steps[-1].mask


def test_generate_traces_per_sample_and_start():
    samples = [Sample(f"disk{i}", *make_disk_image(centre=(60 + 20 * i, 60)), np.zeros((120, 160), bool),
                      expression=f"disk {i}", image_file=f"disk{i}.png") for i in range(2)]
    timing = Timing()
    traces = generate_traces(GrabCutSegmenter(), samples, ("empty", "box", "points"), seed=1, max_clicks=3,
                             timing=timing)
    assert [(t.image_name, t.start.kind if t.start else "empty") for t in traces] == \
           [(f"disk{i}.png", k) for i in range(2) for k in ("empty", "box", "points")]
    assert all(t.captions == [f"disk {i // 3}"] for i, t in enumerate(traces))
    assert all(final_iou(t) > 0.8 for t in traces)
    again = generate_traces(GrabCutSegmenter(), samples, ("points",), seed=1, max_clicks=3)
    assert [t.start.clicks for t in again] == [t.start.clicks for t in traces if t.start and t.start.kind == "points"]
    assert timing.calls["tool"] >= sum(len(t.steps) for t in traces) and timing.seconds["simulator"] > 0
    with pytest.raises(ValueError, match="starts"):
        generate_traces(GrabCutSegmenter(), samples, ("corner",))
    empty = Sample("blank", samples[0].image, np.zeros((120, 160), bool), np.zeros((120, 160), bool))
    assert generate_traces(GrabCutSegmenter(), [empty])[0].steps == []
    with pytest.raises(ValueError, match="blank: box start"):
        generate_traces(GrabCutSegmenter(), [empty], ("box",))
