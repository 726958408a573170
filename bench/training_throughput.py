"""Fine-tuning throughput on the tiny Qwen2-VL: LoRA vs full fine-tuning, same samples, same steps.

    .venv/bin/python -m bench.training_throughput [--json OUT] [--samples N] [--steps S] [--batch B]
                                                  [--rounds R] [--threads T]

The tiny random Qwen2-VL (2 layers, hidden 32, built in a temporary folder by tests/tiny_vlms.py)
is fine-tuned through ``trainer.finetune.finetune`` exactly as a real run is (production loader,
Trainer, checkpoint at the end, LoRA merge, export): ``samples`` SFT samples of GrabCut
trajectories on small synthetic images, ``steps`` optimizer steps of ``batch`` samples. Per method:
training samples per second of the training loop (median over ``rounds``, methods interleaved so
load changes hit both alike) and the wall time of the whole call (loading, saving, merging
included). A 32-wide model is all per-op overhead, so the figures compare the two code paths
(LoRA's extra adapter ops and merge vs full's larger optimizer state), not what a 2B model would
do on a GPU. ``threads`` 1 by default: on a shared 2-core CPU more threads only add sync overhead.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from segagent_backend.agent.segmenters import EmbeddingCache, build_segmenter
from tests.tiny_vlms import make_tiny_qwen2_vl
from trainer.finetune import FinetuneConfig, finetune
from trainer.samples import samples_from_trace
from trainer.trajectories import record_trace

from .common import record

CAPTIONS = ["a red disk", "fat legs", "person bottom left", "the brown chicken in front of more chickens"]
METHODS = ("lora", "full")


def make_samples(count: int, width: int = 64, height: int = 48) -> list:
    """``count`` SFT samples from GrabCut trajectories on disk + bar images (placed at random, seed 0)."""
    rng = np.random.default_rng(0)
    segmenter = build_segmenter("grabcut", EmbeddingCache(64 * 2**20))
    yy, xx = np.mgrid[:height, :width]
    samples: list = []
    while len(samples) < count:
        image = np.clip(rng.normal((70, 110, 80), 6, (height, width, 3)), 0, 255).astype(np.uint8)
        cx, cy, r = rng.integers(14, width - 14), rng.integers(12, height - 12), rng.integers(7, 12)
        gt = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        x0, y0 = rng.integers(4, width - 24), rng.integers(4, height - 16)
        gt[y0:y0 + 10, x0:x0 + 20] = True
        image[gt] = (200, 40, 40)
        image[y0:y0 + 10, x0:x0 + 20] = (40, 40, 200)
        caption = CAPTIONS[len(samples) % len(CAPTIONS)]
        trace = record_trace(segmenter, image, gt, captions=[caption], image_name=f"bench{len(samples)}")
        samples += samples_from_trace(trace, image, stop_sample=True)
    return samples[:count]


def run(samples_count: int, steps: int, batch: int, rounds: int) -> dict:
    samples = make_samples(samples_count)
    rows = {m: dict(samples_per_second=[], wall_s=[], train_s=[]) for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        base = make_tiny_qwen2_vl(Path(tmp) / "qwen2_vl")
        for r in range(rounds + 1):  # round 0 warms up (imports, first-call caches) and is dropped
            for method in METHODS:
                config = FinetuneConfig(method=method, max_steps=steps, batch_size=batch, save_steps=10 * steps,
                                        learning_rate=1e-3)
                start = time.perf_counter()
                result = finetune(samples, base, Path(tmp) / f"{method}{r}", config, progress=False)
                wall = time.perf_counter() - start
                if r:
                    rows[method]["samples_per_second"].append(result.samples_per_second)
                    rows[method]["train_s"].append(result.seconds)
                    rows[method]["wall_s"].append(wall)
                    rows[method]["samples_seen"] = result.samples_seen
                    rows[method]["final_loss"] = result.losses[-1]
    summary = {m: dict(samples_per_second=statistics.median(v["samples_per_second"]),
                       train_s=statistics.median(v["train_s"]), wall_s=statistics.median(v["wall_s"]),
                       samples_seen=v["samples_seen"], final_loss=v["final_loss"]) for m, v in rows.items()}
    return dict(model="tiny qwen2_vl (2 layers, hidden 32)", samples=samples_count, steps=steps, batch=batch,
                rounds=rounds, methods=summary,
                lora_over_full=summary["lora"]["samples_per_second"] / summary["full"]["samples_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave as is)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run(args.samples, args.steps, args.batch, args.rounds)
    print(f"{result['model']}; {args.samples} samples, {args.steps} steps of batch {args.batch}, "
          f"median of {args.rounds} rounds, {args.threads or 'default'} thread(s)")
    print(f"{'method':<8}{'samples/s':>11}{'train s':>9}{'call s':>8}{'final loss':>12}")
    for name, row in result["methods"].items():
        print(f"{name:<8}{row['samples_per_second']:>11.1f}{row['train_s']:>9.2f}{row['wall_s']:>8.2f}"
              f"{row['final_loss']:>12.3f}")
    print(f"LoRA / full throughput: {result['lora_over_full']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    record("training_throughput", {"methods": result["methods"], "LoRA / full (samples/s)": result["lora_over_full"]},
           setup=vars(args))


if __name__ == "__main__":
    main()
