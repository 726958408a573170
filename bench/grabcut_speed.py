"""GrabCut click cost and quality, today's tool (the frozen copy of commit 2f9c489) beside the current one in ONE run.

    .venv/bin/python -m bench.grabcut_speed [--data DIR] [--workers N] [--hd-every K] [--after JSON] [--json OUT]

Sets (the 50 GrabCut images, the standard click simulator, 128 band ignored):

* ``native``: each image at its own size (284x398 .. 640x480);
* ``854x480``: each image and mask resized to 854x480 (DAVIS' frame size; aspect not kept);
* ``1920x1080``: every ``--hd-every``-th image resized to 1920x1080, ``--hd-clicks`` clicks (cost only,
  plus the IoU after 1/3/5 clicks).

Each set is reported per split, fixed before any tuning: ``tune`` = even-index images of the manifest
order (0, 2, ..), ``held-out`` = odd-index images (1, 3, ..). Clicking stops at IoU >= ``--stop-iou``
(0.90) after at least 5 clicks, so NoC@85/90 and the IoU after 1/3/5 clicks are exact while the clicks
timed are those up to NoC@90. A click's cost is the wall time of one ``segment`` call (one worker process
per core, one OpenCV thread each; both tools' jobs interleaved image by image, so load hits both alike).
``--after '{"gc_pixels": 60000}'``: GrabCutParams overrides of the current tool (tuning runs).
Dataset: ``--data``, else ``$SEGAGENT_GRABCUT_DIR``, else ``../shared/datasets/grabcut``; absent: SKIP, exit 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .common import grabcut_root, record

SIZES = {"native": None, "854x480": (854, 480), "1920x1080": (1920, 1080)}
CONFIGS = ("before", "after")


def make_tool(config: str, overrides: dict):
    """``before``: the frozen copy of today's tool; ``after``: the current tool (with ``overrides``)."""
    if config == "before":
        from bench.baselines.grabcut_2f9c489 import GrabCutSegmenter as Before

        return Before()
    from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter

    return GrabCutSegmenter(**overrides)


def resized(sample, size: Optional[tuple[int, int]]):
    """``sample`` with image (cubic), ground truth and ignore band (nearest) resized to ``size`` = (W, H)."""
    import cv2

    if size is None:
        return sample
    nearest = lambda m: None if m is None else cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    return replace(sample, image=cv2.resize(sample.image, size, interpolation=cv2.INTER_CUBIC),
                   gt=nearest(sample.gt), ignore=nearest(sample.ignore))


def _work(job: tuple) -> dict:
    """One (set, configuration, image) run in a worker process: IoU per click and each click's seconds."""
    import cv2

    from trainer.datasets import load_grabcut
    from trainer.evaluation import run_noc

    size_name, config, overrides, root, name, max_clicks, stop_iou = job
    cv2.setNumThreads(1)  # the pool is the parallelism
    sample = resized(load_grabcut(root, names=[name])[0], SIZES[size_name])
    tool = make_tool(config, overrides)
    seconds: list[float] = []
    segment = tool.segment

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return segment(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    tool.segment = timed
    run = run_noc(tool, sample, max_clicks, stop_iou=stop_iou)
    return {"set": size_name, "config": config, "name": name, "ious": run.ious, "click_s": seconds}


def noc(ious: Sequence[float], threshold: float, max_clicks: int) -> int:
    return next((i + 1 for i, v in enumerate(ious) if v >= threshold), max_clicks)


def summarize(rows: list[dict], max_clicks: int) -> dict:
    clicks = np.array([s for r in rows for s in r["click_s"]]) * 1e3
    ious = np.array([r["ious"] for r in rows])
    return {"images": len(rows), "clicks_timed": int(clicks.size),
            "p50_ms": float(np.percentile(clicks, 50)), "p95_ms": float(np.percentile(clicks, 95)),
            "noc85": float(np.mean([noc(r["ious"], 0.85, max_clicks) for r in rows])),
            "noc90": float(np.mean([noc(r["ious"], 0.90, max_clicks) for r in rows])),
            "iou1": float(ious[:, 0].mean()), "iou3": float(ious[:, 2].mean()), "iou5": float(ious[:, 4].mean())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="GrabCut dataset folder (with manifest.json)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--sets", default="native,854x480,1920x1080", help="comma-separated: " + ",".join(SIZES))
    p.add_argument("--limit", type=int, default=None, help="only the first N images (native and 854x480)")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--stop-iou", type=float, default=0.90)
    p.add_argument("--hd-every", type=int, default=5, help="1920x1080: every K-th image")
    p.add_argument("--hd-clicks", type=int, default=5, help="1920x1080: clicks per image")
    p.add_argument("--after", default="{}", help="JSON GrabCutParams overrides of the current tool")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--split", default="all", choices=("all", "tune", "held-out"), help="only these images (tuning runs)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--no-record", action="store_true", help="do not write bench/results (tuning runs)")
    args = p.parse_args(argv)

    from trainer.datasets import grabcut_names

    root = grabcut_root(args.data)
    if root is None:
        return 0
    overrides = json.loads(args.after)
    names = grabcut_names(root, None)
    split = {n: ("tune" if i % 2 == 0 else "held-out") for i, n in enumerate(names)}
    configs = [c for c in args.configs.split(",") if c]
    sets = [s for s in args.sets.split(",") if s]
    jobs = []
    for s in sets:
        chosen = names[:: args.hd_every] if s == "1920x1080" else names[: args.limit]
        chosen = [n for n in chosen if args.split in ("all", split[n])]
        clicks, stop = (args.hd_clicks, None) if s == "1920x1080" else (args.max_clicks, args.stop_iou)
        jobs += [(s, c, overrides, str(root), n, clicks, stop) for n in chosen for c in configs]
    load_before = os.getloadavg()
    started = time.perf_counter()
    if args.workers <= 1:
        results = [_work(j) for j in jobs]
    else:
        with get_context("spawn").Pool(args.workers) as pool:
            results = []
            for r in pool.imap_unordered(_work, jobs, chunksize=1):
                results.append(r)
                print(f"\r{len(results)}/{len(jobs)} runs, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()

    table: dict[str, dict] = {}
    for s in sets:
        clicks = args.hd_clicks if s == "1920x1080" else args.max_clicks
        for part in ("tune", "held-out", "all"):
            for c in configs:
                rows = [r for r in results if r["set"] == s and r["config"] == c and (part == "all" or split[r["name"]] == part)]
                if rows:
                    table[f"{s} {part} {c}"] = summarize(rows, clicks)
    print(f"GrabCut set at {root}: {len(names)} images; {len(jobs)} runs, {args.workers} worker(s), {wall:.0f} s wall; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (os.cpu_count() = {os.cpu_count()})")
    print(f"after = GrabCutSegmenter(**{overrides}); before = bench/baselines/grabcut_2f9c489.py")
    head = f"{'set split tool':<28}{'imgs':>5}{'clicks':>7}{'p50 ms':>8}{'p95 ms':>8}{'NoC85':>7}{'NoC90':>7}{'IoU@1':>7}{'IoU@3':>7}{'IoU@5':>7}"
    print(head + "\n" + "-" * len(head))
    for key, v in table.items():
        print(f"{key:<28}{v['images']:>5}{v['clicks_timed']:>7}{v['p50_ms']:>8.0f}{v['p95_ms']:>8.0f}"
              f"{v['noc85']:>7.2f}{v['noc90']:>7.2f}{v['iou1']:>7.3f}{v['iou3']:>7.3f}{v['iou5']:>7.3f}")
    ratios = {}
    for s in sets:
        b, a = table.get(f"{s} all before"), table.get(f"{s} all after")
        if a and b:
            ratios[s] = {"p50 after/before": a["p50_ms"] / b["p50_ms"], "p95 after/before": a["p95_ms"] / b["p95_ms"],
                         "NoC90 after-before": a["noc90"] - b["noc90"]}
            print(f"{s}: click p50 after/before x{ratios[s]['p50 after/before']:.2f}, "
                  f"p95 x{ratios[s]['p95 after/before']:.2f}, NoC@90 {b['noc90']:.2f} -> {a['noc90']:.2f}")
    setup = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "images": len(names),
             "wall_s": wall, "loadavg_before": load_before, "loadavg_after": load_after}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"setup": setup, "table": table, "ratios": ratios, "runs": results}, indent=1))
    if not args.no_record:
        record("grabcut_speed", {"sets": table, "after / before": ratios}, setup=setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
