"""Does the score sent to Label Studio track the mask's quality? Spearman's rank correlation between each
click's tool score and the mask's true IoU, on the GrabCut set with the standard click simulator.

    .venv/bin/python -m bench.score_quality [--data DIR] [--workers N] [--limit N] [--max-clicks N]
                                            [--tools grabcut,tiny-sam]

Dataset: ``--data``, else ``$SEGAGENT_GRABCUT_DIR``, else ``../shared/datasets/grabcut`` relative to the
repository root; when absent the bench prints why and exits 0. Each image starts from an empty mask; at
each click the simulator clicks on the current error given all previous clicks (``trainer.evaluation``'s
protocol, 128 band ignored), the tool gets all clicks so far and its previous logits, and the bench records
the tool's ``score`` (what ``/predict`` sends for a tool-only click, ``run_given_clicks_stepwise``) and the
true IoU. An image stops early when the simulator finds no error left.

Tools:
- ``grabcut``: the production tool (``GrabCutSegmenter()``, its real behaviour). Its measured figure sets
  ``GrabCutSegmenter.score_estimates_iou``.
- ``tiny-sam``: segment_anything's architecture with RANDOM weights (``tests/tiny_models.py``): no trained
  SAM can be loaded here, so its figure only shows the bench runs on a SAM tool; it says nothing about SAM's
  predicted IoU. The SAM-family flags stay on (their IoU head is trained to predict IoU).
The policy path (the score = the policy's ``Current IOU`` estimate, SegAgent's PRM score) is not measured:
only tiny random policies exist here, whose estimates are noise by construction.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .common import grabcut_root, map_jobs, record

TRACKS = 0.5  # a score whose Spearman with IoU is below this is not sent to Label Studio

TOOLS = {
    "grabcut": "GrabCut (production tool)",
    "tiny-sam": "tiny SAM, random weights (not a real SAM)",
}


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``, ties given their average rank (what Spearman's rho needs)."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    out = np.empty(len(x), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        out[order[s:e]] = (s + 1 + e) / 2.0  # the mean of ranks s+1..e
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Spearman's rho (Pearson's r of the average ranks); None with fewer than 3 pairs or a constant side."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return None if denom == 0 else float((ra * rb).sum() / denom)


def _make_tool(tool: str, checkpoint: Optional[str]):
    if tool == "grabcut":
        from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter

        return GrabCutSegmenter()
    if tool == "tiny-sam":
        import torch

        from segagent_backend.agent.segmenters.sam import SamSegmenter
        from tests.tiny_models import import_segment_anything

        torch.set_num_threads(1)
        import_segment_anything()
        return SamSegmenter.from_checkpoint(checkpoint, device="cpu")
    raise ValueError(f"unknown tool {tool!r}")


def run_image(tool, sample, max_clicks: int) -> dict:
    """One image: per click, the tool's score and the true IoU (the NoC protocol of ``trainer.evaluation``)."""
    from segagent_backend.agent.engine import Episode, EpisodeRequest, drive, first_click
    from segagent_backend.agent.policies.simulator import SimulatorPolicy

    episode = Episode(tool, EpisodeRequest(sample.image, gt=sample.gt, ignore=sample.ignore))
    scores: list[float] = []
    ious: list[float] = []
    started = time.perf_counter()

    def every_click(episode: Episode, step: int, answers) -> None:
        click = first_click(answers)
        if click is None:
            return episode.stop("no error left")
        episode.advance(episode.act(episode.state, click))
        scores.append(float(episode.state.score))
        ious.append(float(episode.iou(episode.state)))

    drive(SimulatorPolicy(), [episode], every_click, max_clicks)
    return {"name": sample.name, "scores": scores, "ious": ious, "seconds": time.perf_counter() - started}


def _work(job: tuple) -> dict:
    """One (tool, image) run in a worker process."""
    import cv2

    from trainer.datasets import load_grabcut

    tool, root, name, max_clicks, checkpoint = job
    cv2.setNumThreads(1)  # the pool is the parallelism
    sample = load_grabcut(root, names=[name])[0]
    return {"tool": tool, **run_image(_make_tool(tool, checkpoint), sample, max_clicks)}


def summarize(runs: Sequence[dict], max_clicks: int) -> dict:
    """Spearman overall (every click of every image) and per click index, with sample sizes."""
    scores = [s for r in runs for s in r["scores"]]
    ious = [v for r in runs for v in r["ious"]]
    per_click = []
    for k in range(max_clicks):
        at = [(r["scores"][k], r["ious"][k]) for r in runs if len(r["ious"]) > k]
        if not at:
            break
        rho = spearman([a for a, _ in at], [b for _, b in at])
        per_click.append({"click": k + 1, "n": len(at), "spearman": rho,
                          "mean score": float(np.mean([a for a, _ in at])),
                          "mean IoU": float(np.mean([b for _, b in at])),
                          "score = 1": int(sum(a >= 1.0 for a, _ in at))})
    rho = spearman(scores, ious)
    return {"clicks": len(scores), "images": len(runs), "spearman": rho,
            "pearson": (float(np.corrcoef(scores, ious)[0, 1]) if len(scores) > 2 and np.std(scores) > 0
                        and np.std(ious) > 0 else None),
            "tracks IoU": rho is not None and rho >= TRACKS,
            "share of scores = 1": float(np.mean(np.asarray(scores) >= 1.0)) if scores else None,
            "mean score": float(np.mean(scores)) if scores else None,
            "mean IoU": float(np.mean(ious)) if ious else None,
            "s/click": sum(r["seconds"] for r in runs) / max(1, len(scores)),
            "per_click": per_click}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="GrabCut dataset folder (with manifest.json)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default <= 2)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (default: all 50)")
    p.add_argument("--max-clicks", type=int, default=20,
                   help="simulated clicks per image (default 20, the NoC protocol)")
    p.add_argument("--tools", default="grabcut,tiny-sam", help="comma-separated: " + ",".join(TOOLS))
    args = p.parse_args(argv)

    root = grabcut_root(args.data)
    if root is None:
        return 0
    from trainer.datasets import grabcut_names

    tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        p.error(f"unknown tool(s) {unknown}; known: {list(TOOLS)}")
    names = grabcut_names(root, args.limit)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if "tiny-sam" in tools:
            from tests.tiny_models import make_tiny_sam_checkpoint

            checkpoint = str(make_tiny_sam_checkpoint(Path(tmp) / "tiny_sam.pth"))
        jobs = [(t, str(root), n, args.max_clicks, checkpoint) for n in names for t in tools]
        results = map_jobs(_work, jobs, args.workers)
    wall = time.perf_counter() - started

    summaries = {t: summarize([r for r in results if r["tool"] == t], args.max_clicks) for t in tools}
    print(f"GrabCut set: {len(names)} images, up to {args.max_clicks} clicks, {args.workers} worker(s), "
          f"{wall:.0f} s wall")
    for t, s in summaries.items():
        rho = "-" if s["spearman"] is None else f"{s['spearman']:.3f}"
        print(f"{TOOLS[t]:<44} Spearman {rho} over {s['clicks']} clicks ({s['images']} images); "
              f"scores = 1: {100 * (s['share of scores = 1'] or 0):.0f}%; tracks IoU (>= {TRACKS}): "
              f"{'yes' if s['tracks IoU'] else 'NO'}; {s['s/click']:.2f} s/click")
        print("   per click: " + "  ".join(
            f"{c['click']}: {'-' if c['spearman'] is None else format(c['spearman'], '.2f')} (n={c['n']})"
            for c in s["per_click"]))

    figures = {
        "tools": {TOOLS[t]: {k: v for k, v in s.items() if k != "per_click"} for t, s in summaries.items()},
        "policy path": "not measured: only tiny random policies exist here (their IoU estimates are noise); "
                       "the policy's estimate stays the sent score",
    }
    for t, s in summaries.items():
        figures[f"{TOOLS[t]}: per click"] = {f"click {c['click']}": {k: v for k, v in c.items() if k != "click"}
                                            for c in s["per_click"]}
    record("score_quality", figures,
           setup={**{k: v for k, v in vars(args).items() if k != "data"}, "dataset": str(root),
                  "images": len(names), "threshold": TRACKS, "wall_s": wall},
           extra={"per_image": {t: {r["name"]: {"scores": r["scores"], "ious": r["ious"]}
                                    for r in results if r["tool"] == t} for t in tools}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
