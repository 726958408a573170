"""The episode loop's own cost, and what lockstep batching buys, with the tiny models.

1. Per-step overhead: everything but the model calls (overlay, prompt, parsing, bookkeeping) as a
   fraction of the step time. Model calls = the policy's processor + generate and the tool's
   set_image + segment, timed by wrapping them; the rest of run_episodes is overhead.
2. Episodes in lockstep (one batched policy call per step) vs one by one: throughput ratio.

Tiny random Qwen2-VL policy and tiny segment-anything SAM (built in a temporary folder), on the
GrabCut images when present (else synthetic ones). Both measurements in one run.

    .venv/bin/python -m bench.loop_overhead [--episodes 8] [--steps 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segagent_backend.agent.loop import EpisodeRequest, LoopConfig, run_episodes
from segagent_backend.agent.policies.hf_vlm import HFVLMPolicy
from segagent_backend.agent.segmenters.sam import SamSegmenter
from tests.tiny_models import import_segment_anything, make_tiny_sam_checkpoint
from tests.tiny_vlms import make_tiny_qwen2_vl
from trainer.datasets import default_grabcut_dir, load_grabcut

from .common import Timed, record

REPO = Path(__file__).resolve().parents[1]


def instrument(policy: HFVLMPolicy, tool: SamSegmenter) -> list:
    """Time every model call: the policy's processor and generate, the tool's set_image and segment."""
    counter = {"model": 0.0}
    policy.processor = Timed(policy.processor, counter)
    policy.model.generate = Timed(policy.model.generate, counter)
    tool.set_image = Timed(tool.set_image, counter)
    tool.segment = Timed(tool.segment, counter)
    return counter


def images(n: int) -> list[tuple[np.ndarray, str]]:
    root = default_grabcut_dir(REPO)
    if (root / "manifest.json").is_file():
        return [(s.image, s.expression) for s in load_grabcut(root, limit=n)]
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), "the object") for _ in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the machines are shared: one thread gives steadier ratios
    with tempfile.TemporaryDirectory() as tmp:
        import_segment_anything()
        tool = SamSegmenter.from_checkpoint(make_tiny_sam_checkpoint(Path(tmp) / "sam.pth"), device="cpu")
        policy = HFVLMPolicy.from_pretrained(make_tiny_qwen2_vl(Path(tmp) / "qwen2-vl"), device="cpu")
        policy.allow_stop = False  # a random model would stop at once: measure steps that click
        requests = [EpisodeRequest(image, text) for image, text in images(args.episodes)]
        # every episode runs exactly `steps` steps: no stop on the estimate, no patience stop
        config = LoopConfig(max_steps=args.steps, stop_iou=1.0, patience=args.steps + 1)
        run_episodes(policy, tool, requests, config)  # warm-up: every image encoded once (cached), kernels loaded
        counter = instrument(policy, tool)

        lockstep, alone, model_share = [], [], []
        for _ in range(args.repeats):
            counter["model"] = 0.0
            started = time.perf_counter()
            together = run_episodes(policy, tool, requests, config)
            lockstep.append(time.perf_counter() - started)
            model_share.append(counter["model"] / lockstep[-1])
            started = time.perf_counter()
            for request in requests:
                run_episodes(policy, tool, [request], config)
            alone.append(time.perf_counter() - started)
    steps = sum(len(r.trajectory) + 1 for r in together)
    report = {
        "episodes": len(requests), "steps_per_episode": args.steps, "policy_steps": steps,
        "lockstep_seconds": float(np.median(lockstep)), "one_by_one_seconds": float(np.median(alone)),
        "overhead_fraction": float(1.0 - np.median(model_share)),
        "malformed_answers": policy.stats.malformed, "answers": policy.stats.answers,
    }
    report["lockstep_speedup"] = report["one_by_one_seconds"] / report["lockstep_seconds"]
    print(f"Episode loop, tiny Qwen2-VL policy + tiny SAM, {len(requests)} episodes x {args.steps} steps, "
          f"median of {args.repeats}")
    print(f"  overhead outside model calls: {100 * report['overhead_fraction']:.2f}% of the step time")
    print(f"  lockstep {report['lockstep_seconds']:.2f} s vs one by one {report['one_by_one_seconds']:.2f} s: "
          f"{report['lockstep_speedup']:.2f}x throughput")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    record("loop_overhead", report, setup=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
