"""NoC benchmark of the GrabCut tool on the 50-image GrabCut set, beside a straightforward seeding.

    .venv/bin/python -m bench.grabcut_noc [--data DIR] [--workers N] [--limit N] [--json OUT]

Dataset: ``--data``, else ``$SEGAGENT_GRABCUT_DIR``, else ``../shared/datasets/grabcut`` relative to
the repository root; when absent the bench prints why and exits 0. Both configurations run in the
same process pool on the same images, so their ratio is measured under the same load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import cv2

from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from trainer.datasets import grabcut_names, load_grabcut
from trainer.evaluation import NocRun, run_noc, summarize

from .common import grabcut_root, map_jobs, record


PUBLISHED_GRAPH_CUT = {"noc85": 7.98, "noc90": 10.00}


class StraightforwardGrabCut(GrabCutSegmenter):
    """The baseline the issue describes: every call runs GrabCut from scratch at full resolution
    (5 iterations) with click disks as sure labels and a probable-object disk around each positive
    click; no previous-mask initialisation, no locality rule, no component filtering."""

    def __init__(self, cache=None):
        super().__init__(cache, max_side=100_000, iterations=5, local=False, adaptive_seed=False)


CONFIGS = {
    "ours": lambda: GrabCutSegmenter(),
    "straightforward": lambda: StraightforwardGrabCut(),
}


def _work(job: tuple[str, str, str, int, Optional[float]]) -> dict:
    """One (configuration, sample) run in a worker process."""
    config, root, name, max_clicks, stop_iou = job
    cv2.setNumThreads(1)  # the pool is the parallelism; keep each worker on one core
    sample = load_grabcut(root, names=[name])[0]
    run = run_noc(CONFIGS[config](), sample, max_clicks, stop_iou=stop_iou)
    return {"config": config, "name": name, "ious": run.ious, "seconds": run.seconds, "calls": run.calls}


def run_bench(root: Path, names: Sequence[str], configs: Sequence[str], workers: int,
              max_clicks: int, stop_iou: Optional[float]) -> dict[str, list[NocRun]]:
    """All (config, image) runs; returns the runs per configuration in ``names`` order."""
    jobs = [(c, str(root), n, max_clicks, stop_iou) for n in names for c in configs]
    results = map_jobs(_work, jobs, workers)
    runs: dict[str, list[NocRun]] = {c: [] for c in configs}
    for r in results:
        runs[r["config"]].append(NocRun(r["name"], r["ious"], [], r["seconds"], r["calls"]))
    return runs


def format_table(summaries: dict[str, dict]) -> str:
    """The results beside the published graph-cut figures, plus ours/baseline ratios."""
    header = f"{'configuration':<24}{'NoC@85':>8}{'NoC@90':>8}{'mIoU@1':>8}{'mIoU@3':>8}{'mIoU@5':>8}{'drops':>7}{'s/click':>9}"
    lines = [header, "-" * len(header)]
    for name, s in summaries.items():
        lines.append(
            f"{name:<24}{s['noc85']:>8.2f}{s['noc90']:>8.2f}{s['miou1']:>8.3f}{s['miou3']:>8.3f}"
            f"{s['miou5']:>8.3f}{s['iou_drops']:>7d}{s['s_per_click']:>9.3f}"
        )
    g = PUBLISHED_GRAPH_CUT
    lines.append(f"{'graph cut (published)':<24}{g['noc85']:>8.2f}{g['noc90']:>8.2f}{'-':>8}{'-':>8}{'-':>8}{'-':>7}{'-':>9}")
    if "ours" in summaries and "straightforward" in summaries:
        o, b = summaries["ours"], summaries["straightforward"]
        lines.append(
            f"ours / straightforward: NoC@85 x{o['noc85'] / b['noc85']:.2f}, NoC@90 x{o['noc90'] / b['noc90']:.2f}, "
            f"s/click x{o['s_per_click'] / b['s_per_click']:.2f}"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="GrabCut dataset folder (with manifest.json)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default <= 2)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--stop-iou", type=float, default=None,
                   help="stop an image once IoU >= this after 5 clicks (faster; NoC at thresholds <= it "
                        "and mIoU@1/3/5 stay exact, drops after the stop are not seen). Default: all clicks")
    p.add_argument("--configs", default="ours,straightforward", help="comma-separated: " + ",".join(CONFIGS))
    args = p.parse_args(argv)

    root = grabcut_root(args.data)
    if root is None:
        return 0
    names = grabcut_names(root, args.limit)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")

    start = time.perf_counter()
    runs = run_bench(root, names, configs, max(1, args.workers), args.max_clicks, args.stop_iou)
    wall = time.perf_counter() - start
    summaries = {c: summarize(runs[c], args.max_clicks) for c in configs}
    print(f"GrabCut set: {len(names)} images, {args.max_clicks} clicks max, {args.workers} worker(s), {wall:.0f} s wall")
    print(format_table(summaries))
    if args.json is not None:
        payload = {
            "dataset": str(root),
            "images": len(names),
            "max_clicks": args.max_clicks,
            "stop_iou": args.stop_iou,
            "workers": args.workers,
            "wall_s": wall,
            "published_graph_cut": PUBLISHED_GRAPH_CUT,
            "summary": summaries,
            "per_image": {c: {r.name: r.ious for r in runs[c]} for c in configs},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
    labels = {"noc85": "NoC@85", "noc90": "NoC@90", "miou1": "mIoU@1", "miou3": "mIoU@3", "miou5": "mIoU@5",
              "iou_drops": "IoU drops", "s_per_click": "s/click"}
    figures = {"configurations": {**{c: {v: s[k] for k, v in labels.items()} for c, s in summaries.items()},
                                  "graph cut (published)": {"NoC@85": PUBLISHED_GRAPH_CUT["noc85"],
                                                            "NoC@90": PUBLISHED_GRAPH_CUT["noc90"]}}}
    if "ours" in summaries and "straightforward" in summaries:
        o, b = summaries["ours"], summaries["straightforward"]
        figures["ours / straightforward"] = {k: o[k] / b[k] for k in ("noc85", "noc90", "s_per_click")}
    curves = {c: [sum(r.ious[i] for r in runs[c]) / len(runs[c]) for i in range(min(len(r.ious) for r in runs[c]))]
              for c in configs if runs[c]}
    record("grabcut_noc", figures, setup={**vars(args), "images": len(names), "wall_s": wall},
           plot={"title": f"GrabCut set ({len(names)} images): mean IoU after k clicks", "x": "clicks",
                 "y": "mean IoU", "series": curves})
    return 0


if __name__ == "__main__":
    sys.exit(main())
