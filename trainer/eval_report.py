"""What ``segagent eval`` writes into its output folder: CSV, JSON and a PNG plot (OpenCV, no plotting library).

Policy runs (:func:`write_eval`): ``summary.json`` (every number of ``EvalRun.summary`` + how it was
run), ``samples.csv`` (one row per sample), ``steps.csv`` (mean IoU per step), ``predictions.json``
(SegAgent's prediction layout, ``trainer.refseg``), ``iou_per_step.png``.
NoC runs (:func:`write_noc`): ``noc.json``, ``noc.csv`` (one row per image), ``noc_iou.png``.
IoUs are written 0..1; the PRM statistics are on IoU x 100, as the paper reports them.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from segagent_backend.agent.metrics import noc

from .eval_run import EvalRun
from .evaluation import NocRun, count_drops, summarize
from .plot import draw_lines

def _write_json(path: Path, payload) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(payload, indent=1, allow_nan=True))
    os.replace(temp, path)


def write_eval(run: EvalRun, out: Path, info: dict) -> dict:
    """Write a policy run's files into ``out`` (created); returns the summary written to summary.json."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {**run.summary(), **info}
    _write_json(out / "summary.json", summary)
    _write_json(out / "predictions.json", [r.record for r in run.results])
    steps = summary["per_step"]["step"]
    with open(out / "samples.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "image", "caption", "iou", "intersection", "union", "score", "clicks", "calls",
                    "malformed", "stop_reason"] + [f"iou_step{t}" for t in steps] + [f"selected_step{t}" for t in steps]
                   + ["start_iou"])
        for r in run.results:
            start = "" if r.start_iou is None else f"{r.start_iou:.6f}"
            w.writerow([r.name, r.image_file, r.caption, f"{r.iou:.6f}", r.intersection, r.union, f"{r.score:.4f}",
                        r.clicks, r.calls, r.malformed, r.stop_reason] + [f"{v:.6f}" for v in r.step_ious]
                       + [f"{v:.6f}" for v in r.selected_ious] + [start])
    per_step = summary["per_step"]
    with open(out / "steps.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "mean_iou_after_step", "mean_iou_selected"])
        for t, a, s in zip(steps, per_step["iou_after_step"], per_step["iou_selected"]):
            w.writerow([t, f"{a:.6f}", f"{s:.6f}"])
    png = draw_lines({"mask after step t": list(zip(steps, per_step["iou_after_step"])),
                      "PRM-selected up to step t": list(zip(steps, per_step["iou_selected"]))},
                     f"{summary['samples']} samples, {summary['protocol']} protocol: gIoU {summary['giou']:.3f}, "
                     f"cIoU {summary['ciou']:.3f}", "policy steps", "mean IoU")
    (out / "iou_per_step.png").write_bytes(png)
    return summary


def noc_summary(runs: Sequence[NocRun], max_clicks: int, seconds: float) -> dict:
    """``evaluation.summarize`` (NoC@85/90, mean IoU after 1/3/5 clicks, clicks that lowered IoU, seconds
    per click) plus the mean IoU after every k = 1..max_clicks and the run's wall time."""
    ious = np.asarray([r.ious for r in runs], dtype=np.float64).reshape(len(runs), max_clicks)
    return {**summarize(runs, max_clicks), "max_clicks": max_clicks,
            "miou_after_click": ious.mean(axis=0).tolist(), "seconds": seconds}


def write_noc(runs: Sequence[NocRun], out: Path, summary: dict) -> None:
    """Write a NoC run's files into ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "noc.json", {**summary, "per_image": {r.name: r.ious for r in runs}})
    k = summary["max_clicks"]
    with open(out / "noc.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "noc85", "noc90", "iou_drops"] + [f"iou{i}" for i in range(1, k + 1)])
        for r in runs:
            w.writerow([r.name, noc(r.ious, 0.85, k), noc(r.ious, 0.90, k), count_drops(r.ious)]
                       + [f"{v:.6f}" for v in r.ious])
    curve = list(zip(range(1, k + 1), summary["miou_after_click"]))
    png = draw_lines({"mean IoU": curve}, f"{summary['samples']} images: NoC@85 {summary['noc85']:.2f}, "
                     f"NoC@90 {summary['noc90']:.2f}", "clicks", "mean IoU")
    (out / "noc_iou.png").write_bytes(png)


def write_scores(records: Sequence[dict], scores: dict, out: Path, predictions_file: str, scoring: str = "ours",
                 total: Optional[int] = None) -> None:
    """A scored prediction file: ``scores.json`` (cIoU, gIoU, the scoring used, records read, samples scored
    and dropped) and ``scores.csv`` (one row per record; a dropped record's IoU is empty)."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "scores.json", {"predictions": predictions_file, "selection": "release", "scoring": scoring,
                                      "records": len(records), "records_in_file": len(records) if total is None else total,
                                      "samples": scores["samples"], "dropped": scores.get("dropped", 0),
                                      "ciou": scores["ciou"], "giou": scores["giou"]})
    with open(out / "scores.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["img_path", "caption", "iou"])
        for record, value in zip(records, scores["ious"]):
            caption = record.get("caption")
            w.writerow([record.get("img_path", ""), caption[0] if isinstance(caption, list) and caption else caption,
                        "" if value is None else f"{value:.6f}"])
