"""Trajectory generation throughput on the GrabCut set: the click simulator alone beside full generation.

    .venv/bin/python -m bench.trajectory_throughput [--data DIR] [--limit N] [--starts empty,box,points]
                                                    [--repeats R] [--json OUT]

By default the first 25 images (manifest order): about 3 minutes on 2 shared CPU cores, where all 50
(``--limit 0``) take about 6.

Dataset: ``--data``, else ``$SEGAGENT_GRABCUT_DIR``, else ``../shared/datasets/grabcut`` relative to
the repository root; when absent the bench prints why and exits 0. One process, one run: first full
generation with the GrabCut tool (``trainer.trajectories.generate_traces``: simulator + tool + IoU per
click, SegAgent's rules), then the simulator alone (``next_click``) replayed on exactly the states
the recorded clicks were made on, ``--repeats`` times (the fastest repeat counts). Images are loaded
before any timing starts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from trainer.datasets import Sample, load_grabcut
from trainer.traces import Trace
from trainer.trajectories import Timing, final_iou, generate_traces

from .common import grabcut_root, record



def replay_states(traces: Sequence[Trace], samples: Sequence[Sample]) -> list[tuple]:
    """(gt, shown mask, ignore, clicks before, recorded click) for every recorded click."""
    by_name = {s.image_file or s.name: s for s in samples}  # what generate_traces names a trace by
    states = []
    for trace in traces:
        sample = by_name[trace.image_name]
        shown = trace.start.mask if trace.start is not None else np.zeros_like(trace.gt)
        made = list(trace.start.clicks) if trace.start is not None else []
        for step in trace.steps:
            states.append((sample.gt, shown, sample.ignore, list(made), step.click))
            made.append(step.click)
            shown = step.mask
    return states


def time_simulator(states: list[tuple], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` passes of ``next_click`` over ``states`` (checks the clicks)."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        clicks = [next_click(gt, shown, ignore, made) for gt, shown, ignore, made, _ in states]
        best = min(best, time.perf_counter() - began)
        if clicks != [s[4] for s in states]:
            raise AssertionError("the simulator replay disagrees with the recorded clicks")
    return best


def format_table(rows: list[tuple[str, int, float]]) -> str:
    header = f"{'measure':<58}{'clicks':>8}{'seconds':>10}{'clicks/s':>11}"
    lines = [header, "-" * len(header)]
    lines += [f"{name:<58}{n:>8d}{s:>10.2f}{n / s:>11.1f}" for name, n, s in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="GrabCut dataset folder (with manifest.json)")
    p.add_argument("--limit", type=int, default=25, help="the first N images, manifest order (default 25; 0 = all)")
    p.add_argument("--starts", default="empty", help="start states per image (default: empty)")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--target-iou", type=float, default=0.98)
    p.add_argument("--repeats", type=int, default=5, help="passes of the simulator-only replay (fastest counts)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    root = grabcut_root(args.data)
    if root is None:
        return 0
    samples = load_grabcut(root, limit=args.limit or None)
    starts = tuple(k for k in args.starts.split(",") if k)

    timing = Timing()
    began = time.perf_counter()
    traces = generate_traces(GrabCutSegmenter(), samples, starts, 0, args.target_iou, args.max_clicks, timing=timing)
    full = time.perf_counter() - began
    states = replay_states(traces, samples)
    simulator = time_simulator(states, max(1, args.repeats))

    clicks = len(states)
    print(f"GrabCut set: {len(samples)} images x starts {','.join(starts)} = {len(traces)} traces, {clicks} recorded "
          f"clicks ({timing.calls.get('tool', 0)} tool calls), mean final IoU "
          f"{np.mean([final_iou(t) for t in traces]):.3f}; 1 process, {os.cpu_count()} CPU(s)")
    rows = [("simulator only (next_click on the recorded states)", clicks, simulator),
            ("full generation (simulator + GrabCut tool + IoU)", clicks, full)]
    print(format_table(rows))
    print(f"simulator / full generation: x{full / simulator:.0f} clicks/s")
    shares = {k: v / full for k, v in sorted(timing.seconds.items(), key=lambda kv: -kv[1])}
    print("time of full generation: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()))
    if args.json is not None:
        payload = {"dataset": str(root), "images": len(samples), "starts": list(starts), "traces": len(traces),
                   "clicks": clicks, "tool_calls": timing.calls.get("tool", 0), "full_s": full,
                   "simulator_s": simulator, "timing_s": timing.seconds, "timing_calls": timing.calls}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
    record("trajectory_throughput", {"clicks/s": {name: {"clicks": n, "seconds": s, "clicks/s": n / s}
                                                  for name, n, s in rows},
                                     "simulator / full generation (clicks/s)": full / simulator,
                                     "share of full generation": shares},
           setup={**vars(args), "traces": len(traces)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
