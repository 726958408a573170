"""One StaR+ round on the tiny Qwen2-VL: how the training loss and the rollout IoU move.

    .venv/bin/python -m bench.star_round [--images 4] [--epochs 150] [--json OUT]

On the first ``--images`` GrabCut images (found through SEGAGENT_GRABCUT_DIR, default
../shared/datasets/grabcut) with the GrabCut tool: trajectories -> SFT from the random base (round 0)
-> StaR+ round 1 (roll the SFT policy out, keep its IoU-raising clicks, replace the others with the
simulator's, train again from the base on original + refined samples). Reported side by side from one
run: loss first/last per round, and the mean IoU of the policy's own episodes on the training images
(greedy, PRM selection, 7 steps) for the base, after SFT and after StaR+. The model is a 2-layer random
toy, so the figures show the mechanics moving, not SegAgent's quality.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from segagent_backend.agent.loop import LoopConfig
from segagent_backend.agent.policies import PolicySpec, load_policy
from segagent_backend.agent.segmenters import EmbeddingCache, build_segmenter
from tests.tiny_vlms import make_tiny_qwen2_vl
from trainer.datasets import default_grabcut_dir, load_grabcut
from trainer.evaluation import evaluate_policy
from trainer.finetune import FinetuneConfig
from trainer.pipeline import train_policy
from trainer.samples import samples_from_trace
from trainer.trajectories import generate_traces

from .common import record


def main() -> int:
    import torch

    torch.set_num_threads(1)  # a 32-wide model: more threads only add contention on a shared CPU
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=150, help="epochs of one batch holding every sample")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    root = default_grabcut_dir()
    if not (root / "manifest.json").is_file():
        print(f"skipped: GrabCut set not found at {root} (set SEGAGENT_GRABCUT_DIR)")
        return 0
    samples = load_grabcut(root, limit=args.images)
    tool = build_segmenter("grabcut", EmbeddingCache(2**30))
    loop = LoopConfig(max_steps=7)
    with tempfile.TemporaryDirectory() as tmp:
        base = PolicySpec("hf-vlm", str(make_tiny_qwen2_vl(Path(tmp) / "base")), device="cpu")
        traces = generate_traces(tool, samples)
        sft = [x for t, s in zip(traces, samples) for x in samples_from_trace(t, s.image, stop_sample=True)]
        # the overfit recipe of tests/trainer/test_finetune.py: one batch of everything, constant lr
        config = FinetuneConfig(method="full", epochs=args.epochs, learning_rate=3e-3, batch_size=256,
                                lr_scheduler="constant", device="cpu")

        def rollout(folder) -> dict:
            score = evaluate_policy(load_policy(base.at(folder)), tool, samples, loop)
            return {"miou": round(score.miou, 4), "ciou": round(score.ciou, 4)}

        start = time.perf_counter()
        before = rollout(base.checkpoint)
        outcome = train_policy(sft, base, Path(tmp) / "run", config, loop=loop, star_rounds=1, samples=samples,
                               segmenter=tool, progress=False)
        after_sft = rollout(Path(tmp) / "run" / "rounds" / "0" / "model")
        after_star = rollout(outcome.model_dir)
        seconds = time.perf_counter() - start
    rounds = outcome.to_json()["rounds"]
    figures = {"images": len(samples), "sft_samples": len(sft), "rounds": rounds, "rollout_base": before,
               "rollout_after_sft": after_sft, "rollout_after_star": after_star, "seconds": round(seconds, 1)}
    print(f"{len(samples)} GrabCut images, {len(sft)} SFT samples, {seconds:.0f} s")
    print("| stage | samples | loss first -> last | rollout mIoU | rollout cIoU |")
    print("|---|---|---|---|---|")
    print(f"| random base | - | - | {before['miou']:.3f} | {before['ciou']:.3f} |")
    names = ("SFT (round 0)", "StaR+ (round 1)")
    for name, r, roll in zip(names, rounds, (after_sft, after_star)):
        print(f"| {name} | {r['samples']} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} | {roll['miou']:.3f} | "
              f"{roll['ciou']:.3f} |")
    star = rounds[1]
    print(f"StaR+ rollout of the SFT policy: {star['kept']} clicks kept, {star['replaced']} replaced")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    stages = {"random base": {"rollout mIoU": before["miou"], "rollout cIoU": before["ciou"]}}
    for name, r, roll in zip(names, rounds, (after_sft, after_star)):
        stages[name] = {"samples": r["samples"], "loss first": r["first_loss"], "loss last": r["last_loss"],
                        "rollout mIoU": roll["miou"], "rollout cIoU": roll["ciou"]}
    record("star_round", {"stages": stages, "StaR+ clicks kept": star["kept"],
                          "StaR+ clicks replaced": star["replaced"]},
           setup={**vars(args), "sft_samples": len(sft), "seconds": figures["seconds"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
