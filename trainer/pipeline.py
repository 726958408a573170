"""A whole training run: SFT on trajectories, then StaR+ rounds, each round resumable.

Layout under ``out``::

    rounds/0/           SFT on the given samples (finetune's folder: model/, checkpoints/, loss.png)
    rounds/1/ ...       StaR+ round r: trained again FROM THE BASE on the SFT samples + every refined set
    rounds/<r>/star.json  what round r's rollout kept and replaced, and its IoU
    model/              the final policy (the last round's), what a registry version holds

A round whose ``model/`` exists is done and is skipped when the run starts again, so a killed run
resumes where it stopped (inside a round, ``finetune`` resumes from its checkpoints).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from segagent_backend.agent.loop import LoopConfig
from segagent_backend.agent.policies import PolicySpec
from segagent_backend.agent.segmenters.base import Segmenter

from .datasets import Sample
from .finetune import FinetuneConfig, finetune
from .native_sft import NATIVE_KIND, uses_native_path
from .samples import SFTSample


@dataclass
class RoundReport:
    """One round: its training samples, losses, and (StaR+ rounds) the rollout that refined the data."""

    round: int
    samples: int
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    samples_per_second: Optional[float] = None
    resumed_from: Optional[str] = None  # the checkpoint a restarted run continued from
    rollout_iou: Optional[float] = None  # mean IoU of the previous round's policy's own episodes
    kept: Optional[int] = None
    replaced: Optional[int] = None


@dataclass
class TrainOutcome:
    model_dir: Path
    rounds: list[RoundReport] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"model_dir": str(self.model_dir), "rounds": [asdict(r) for r in self.rounds]}


def train_policy(sft: Sequence[SFTSample], base: PolicySpec, out: Path, config: FinetuneConfig, *,
                 loop: LoopConfig = LoopConfig(), star_rounds: int = 0, samples: Sequence[Sample] = (),
                 segmenter: Optional[Segmenter] = None, progress: bool = True) -> TrainOutcome:
    """Fine-tune the policy ``base`` on ``sft``; then ``star_rounds`` StaR+ rounds over ``samples`` with
    ``segmenter``, each rolling out the previous round's model as ``base`` says (kind, coordinates,
    device, dtype, temperature, decoding) under ``loop`` (the serving protocol, candidates, stop rule).

    A Qwen-VL-Chat base (config.json ``model_type: qwen``) is trained and rolled out as ``qwen-vl-chat``
    (the native model) whatever ``base.kind`` says: no other policy can load it.
    """
    if star_rounds and (not samples or segmenter is None):
        raise ValueError("StaR+ rounds need the training samples (images + masks) and a segmenter")
    out = Path(out)
    if uses_native_path(base.checkpoint, base.kind):
        base = replace(base, kind=NATIVE_KIND)
    data = list(sft)
    reports = [_train_round(0, data, base, out, config, progress)]
    for r in range(1, star_rounds + 1):
        refined, star = _refine(r, out, samples, segmenter, base, loop)
        data += refined
        reports.append(_train_round(r, data, base, out, config, progress, star))
    final = out / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(out / "rounds" / str(star_rounds) / "model", final)
    outcome = TrainOutcome(final, reports)
    (out / "pipeline.json").write_text(json.dumps(outcome.to_json(), indent=2))
    return outcome


def _train_round(r: int, data: list[SFTSample], base: PolicySpec, out: Path, config: FinetuneConfig, progress: bool,
                 star: Optional[dict] = None) -> RoundReport:
    folder = out / "rounds" / str(r)
    log = folder / "train_log.json"
    if not ((folder / "model").is_dir() and log.is_file()):
        finetune(data, base.checkpoint, folder, config, progress=progress, policy_kind=base.kind)
    written = json.loads(log.read_text())
    losses = [entry["loss"] for entry in written.get("losses", [])] or [None]
    report = RoundReport(r, len(data), losses[0], losses[-1], written.get("samples_per_second"),
                         written.get("resumed_from"))
    if star:
        report.rollout_iou, report.kept, report.replaced = star["rollout_iou"], star["kept"], star["replaced"]
    return report


def _refine(r: int, out: Path, samples: Sequence[Sample], segmenter: Segmenter, base: PolicySpec,
            loop: LoopConfig) -> tuple[list[SFTSample], dict]:
    """Roll out round r-1's policy; its refined samples (recomputed on resume: greedy rollouts repeat)."""
    from segagent_backend.agent.policies import load_policy

    from .evaluation import evaluate_policy
    from .star import star_samples

    policy = load_policy(base.at(out / "rounds" / str(r - 1) / "model"))
    score = evaluate_policy(policy, segmenter, samples, loop)
    refined, rollouts = star_samples(policy, segmenter, samples, loop, convention=base.convention)
    star = {"loop": asdict(loop), "rollout_iou": score.miou, "rollout_ciou": score.ciou,
            "corrected_iou": float(np.mean([ro.ious[-1] for ro in rollouts])),
            "kept": sum(ro.kept for ro in rollouts), "replaced": sum(ro.replaced for ro in rollouts),
            "refined_samples": len(refined)}
    folder = out / "rounds" / str(r)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "star.json").write_text(json.dumps(star, indent=2))
    return refined, star
