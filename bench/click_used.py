"""Is every click used? The GrabCut tool before and after a change, side by side on the GrabCut set.

    .venv/bin/python -m bench.click_used [--old FILE] [--data DIR] [--workers N] [--limit N] [--json OUT]

    # the committed tool beside the working tree's:
    git show HEAD:segagent_backend/agent/segmenters/grabcut.py > /tmp/grabcut_old.py
    .venv/bin/python -m bench.click_used --old /tmp/grabcut_old.py

Runs the standard NoC protocol (as ``trainer.evaluation.run_noc`` does: the standard simulator
``next_click``, 128 band ignored, 20 clicks, all clicks + the previous logits every call; the loop is
written out here to see what each click did) with the tool of ``--old`` (a copy of ``grabcut.py``
loaded from that path; default: none, only the current tool) and the current ``GrabCutSegmenter``
in the same process pool, and reports per tool:

* ``pixel wrong``: the share of clicks after which the clicked pixel itself is still wrong (a
  positive click's pixel outside the mask, a negative click's pixel inside it), split by sign;
* ``dot only``: the share of clicks that corrected less than 10% of the error region they were put
  in (the connected component of false negatives (positive click) or false positives (negative
  click), ignore band excluded, that contains the click, measured before the click): the click
  was taken (its dot is right) but the part it pointed at was not, split by sign; and ``fixed``,
  the mean share of that region corrected;
* NoC@85/90, mean IoU after 1/3/5 clicks, IoU drops (> 0.01) and seconds per click;
* the ``person1`` example of the issue: a positive click on the face, then one on the shirt
  (coordinates below, original pixels x = column, y = row), IoU after each, and the shirt alone.

Dataset: ``--data``, else ``$SEGAGENT_GRABCUT_DIR``, else ``../shared/datasets/grabcut`` relative to
the repository root; when absent the bench prints why and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.metrics import iou, mean_noc
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Click
from trainer.datasets import grabcut_names, load_grabcut

from .common import grabcut_root, map_jobs, record


#: person1.jpg (600 x 450): the face (between nose and mouth, skin) and the shirt (the red front,
#: below the white collar), picked on the image with its trimap over it
PERSON1_FACE = (345, 260)
PERSON1_SHIRT = (350, 420)
DOT_ONLY = 0.10  # a click that corrected less than this share of its error region was not used


def load_tool(path: Optional[str]):
    """``GrabCutSegmenter`` of the current tree (path None) or of a copy of grabcut.py at ``path``
    (loaded as a sibling module so that its relative imports resolve)."""
    if path is None:
        return GrabCutSegmenter
    name = "segagent_backend.agent.segmenters._grabcut_old"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].GrabCutSegmenter


def _error_region(gt, pred, ignore, click: Click) -> np.ndarray:
    """The connected error component (FN for a positive click, FP for a negative) holding ``click``."""
    err = (gt & ~pred) if click.positive else (~gt & pred)
    err &= ~ignore
    x, y = int(click.x), int(click.y)
    if not err[y, x]:
        return np.zeros_like(err)
    _, labels = cv2.connectedComponents(err.astype(np.uint8), connectivity=8)
    return labels == labels[y, x]


def run_one(tool, sample, max_clicks: int) -> dict:
    """The NoC protocol as ``run_noc`` runs it, recording what each click did."""
    seg = tool()
    seg.set_image(sample.image)
    gt, ignore = sample.gt, sample.ignore
    pred = np.zeros(gt.shape, bool)
    clicks: list[Click] = []
    ious: list[float] = []
    per_click: list[tuple[bool, bool, float]] = []  # (positive, pixel still wrong, share of region fixed)
    logits = None
    seconds = 0.0
    for _ in range(max_clicks):
        click = next_click(gt, pred, ignore, clicks)
        if click is None:
            break
        region = _error_region(gt, pred, ignore, click)
        clicks.append(click)
        start = time.perf_counter()
        out = seg.segment(list(clicks), prev_logits=logits)
        seconds += time.perf_counter() - start
        pred, logits = out.mask, out.logits
        x, y = int(click.x), int(click.y)
        wrong = bool(pred[y, x]) != click.positive
        fixed = float(np.mean(pred[region] == click.positive)) if region.any() else 1.0
        per_click.append((click.positive, wrong, fixed))
        ious.append(iou(pred, gt, ignore))
    calls = len(ious)
    fill = ious[-1] if ious else 0.0
    ious.extend([fill] * (max_clicks - len(ious)))
    return {"ious": ious, "clicks": per_click, "seconds": seconds, "calls": calls}


def person1_example(tool, sample) -> dict:
    """IoU after the face click, after face + shirt, and after the shirt click alone."""
    seg = tool()
    seg.set_image(sample.image)
    face, shirt = Click(*PERSON1_FACE), Click(*PERSON1_SHIRT)
    a = seg.segment([face])
    b = seg.segment([face, shirt], prev_logits=a.logits)
    c = seg.segment([shirt])
    score = lambda m: float(iou(m, sample.gt, sample.ignore))  # noqa: E731
    return {"face": score(a.mask), "face_then_shirt": score(b.mask), "shirt_alone": score(c.mask),
            "added_pixels": int(np.count_nonzero(b.mask & ~a.mask))}


def _work(job: tuple[str, str, Optional[str], str, str, int]) -> dict:
    """One (kind, configuration, image) job in a worker: kind "noc" = the protocol, "person1" = the example."""
    kind, config, old_path, root, name, max_clicks = job
    cv2.setNumThreads(1)  # the pool is the parallelism
    tool = load_tool(old_path if config == "old" else None)
    sample = load_grabcut(root, names=[name])[0]
    result = run_one(tool, sample, max_clicks) if kind == "noc" else {"person1": person1_example(tool, sample)}
    return {"kind": kind, "config": config, "name": name, **result}


def summarize(results: Sequence[dict], max_clicks: int) -> dict:
    ious = [r["ious"] for r in results]
    arr = np.asarray(ious, np.float64)
    clicks = [c for r in results for c in r["clicks"]]
    out = {
        "images": len(results),
        "noc85": mean_noc(ious, 0.85, max_clicks),
        "noc90": mean_noc(ious, 0.90, max_clicks),
        "miou1": float(arr[:, 0].mean()),
        "miou3": float(arr[:, 2].mean()),
        "miou5": float(arr[:, 4].mean()),
        "iou_drops": int(np.count_nonzero(np.diff(arr, axis=1) < -0.01)),
        "s_per_click": sum(r["seconds"] for r in results) / max(1, sum(r["calls"] for r in results)),
    }
    for label, sign in (("all", None), ("pos", True), ("neg", False)):
        sel = [c for c in clicks if sign is None or c[0] == sign]
        n = len(sel)
        out[f"clicks_{label}"] = n
        out[f"pixel_wrong_{label}"] = sum(c[1] for c in sel) / n if n else float("nan")
        out[f"dot_only_{label}"] = sum(c[2] < DOT_ONLY for c in sel) / n if n else float("nan")
        out[f"fixed_{label}"] = float(np.mean([c[2] for c in sel])) if n else float("nan")
    return out


def format_table(summaries: dict[str, dict]) -> str:
    rows = [
        ("clicks (pos / neg)", lambda s: f"{s['clicks_all']} ({s['clicks_pos']} / {s['clicks_neg']})"),
        ("pixel still wrong, all", lambda s: f"{s['pixel_wrong_all']:.3f}"),
        ("  positive / negative", lambda s: f"{s['pixel_wrong_pos']:.3f} / {s['pixel_wrong_neg']:.3f}"),
        (f"dot only (< {DOT_ONLY:.0%} of region), all", lambda s: f"{s['dot_only_all']:.3f}"),
        ("  positive / negative", lambda s: f"{s['dot_only_pos']:.3f} / {s['dot_only_neg']:.3f}"),
        ("region fixed, mean pos / neg", lambda s: f"{s['fixed_pos']:.3f} / {s['fixed_neg']:.3f}"),
        ("NoC@85", lambda s: f"{s['noc85']:.2f}"),
        ("NoC@90", lambda s: f"{s['noc90']:.2f}"),
        ("mIoU@1 / @3 / @5", lambda s: f"{s['miou1']:.3f} / {s['miou3']:.3f} / {s['miou5']:.3f}"),
        ("IoU drops > 0.01", lambda s: f"{s['iou_drops']}"),
        ("s/click", lambda s: f"{s['s_per_click']:.3f}"),
    ]
    names = list(summaries)
    width = 38
    lines = [f"{'':<{width}}" + "".join(f"{n:>22}" for n in names)]
    for label, fmt in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{fmt(summaries[n]):>22}" for n in names))
    for n in names:
        p = summaries[n].get("person1")
        if p:
            lines.append(f"person1 face {PERSON1_FACE} then shirt {PERSON1_SHIRT}, {n}: IoU {p['face']:.3f} -> "
                         f"{p['face_then_shirt']:.3f} (+{p['added_pixels']} px; shirt alone {p['shirt_alone']:.3f})")
    if "old" in summaries and "new" in summaries:
        o, w = summaries["old"], summaries["new"]
        ratio = lambda a, b: f"x{a / b:.2f}" if b else "n/a"  # noqa: E731
        lines.append(
            f"new / old: dot-only positive {ratio(w['dot_only_pos'], o['dot_only_pos'])}, "
            f"negative {ratio(w['dot_only_neg'], o['dot_only_neg'])}, NoC@85 {ratio(w['noc85'], o['noc85'])}, "
            f"NoC@90 {ratio(w['noc90'], o['noc90'])}, s/click {ratio(w['s_per_click'], o['s_per_click'])}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=None, help="a copy of grabcut.py to run beside the current tool "
                   "(e.g. from `git show HEAD:segagent_backend/agent/segmenters/grabcut.py`)")
    p.add_argument("--data", type=Path, default=None, help="GrabCut dataset folder (with manifest.json)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default <= 2)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--names", default=None, help="comma-separated image names (default: all)")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    root = grabcut_root(args.data)
    if root is None:
        return 0
    if args.old is not None and not Path(args.old).is_file():
        p.error(f"--old: no such file {args.old}")
    names = args.names.split(",") if args.names else grabcut_names(root, args.limit)
    configs = (["old"] if args.old else []) + ["new"]
    jobs = [("noc", c, args.old, str(root), n, args.max_clicks) for n in names for c in configs]
    if "person1" in grabcut_names(root):
        jobs += [("person1", c, args.old, str(root), "person1", args.max_clicks) for c in configs]

    start = time.perf_counter()
    results = map_jobs(_work, jobs, args.workers)
    wall = time.perf_counter() - start

    summaries = {}
    for c in configs:
        mine = [r for r in results if r["config"] == c and r["kind"] == "noc"]
        summaries[c] = summarize(mine, args.max_clicks)
        example = next((r["person1"] for r in results if r["config"] == c and r["kind"] == "person1"), None)
        if example:
            summaries[c]["person1"] = example
    print(f"GrabCut set: {len(names)} images, {args.max_clicks} clicks, {args.workers} worker(s), {wall:.0f} s wall"
          + (f"; old = {args.old}" if args.old else ""))
    print(format_table(summaries))
    if args.json is not None:
        payload = {
            "dataset": str(root), "images": len(names), "max_clicks": args.max_clicks, "old": args.old,
            "workers": args.workers, "wall_s": wall, "dot_only_threshold": DOT_ONLY,
            "person1_clicks": {"face": PERSON1_FACE, "shirt": PERSON1_SHIRT},
            "summary": summaries,
            "per_image": {c: {r["name"]: {"ious": r["ious"], "clicks": r["clicks"]}
                              for r in results if r["config"] == c and r["kind"] == "noc"} for c in configs},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
    record("click_used", {"tools": {c: {k: v for k, v in s.items() if k != "person1"} for c, s in summaries.items()},
                          "person1": {c: s["person1"] for c, s in summaries.items() if "person1" in s}},
           setup={**vars(args), "images": len(names), "wall_s": wall})
    return 0


if __name__ == "__main__":
    sys.exit(main())
