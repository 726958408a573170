"""The standard NoC evaluation (the engine with the simulator as the policy, every click kept, IoU after
each) and a policy's score on held-out samples (its own episodes, ``run_episodes``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from segagent_backend.agent.engine import Episode, EpisodeRequest, Timing, drive, first_click
from segagent_backend.agent.loop import LoopConfig, run_episodes
from segagent_backend.agent.metrics import ciou, intersection_union, mean_noc
from segagent_backend.agent.policies.simulator import SimulatorPolicy
from segagent_backend.agent.segmenters.base import Segmenter
from segagent_backend.agent.types import Click

from .datasets import Sample


@dataclass
class NocRun:
    """One sample's run: ``ious[i]`` = IoU after click i + 1 (length max_clicks); timing of the tool."""

    name: str
    ious: list[float]
    clicks: list[Click] = field(default_factory=list)
    seconds: float = 0.0  # time spent in segment() calls
    calls: int = 0  # number of segment() calls timed


def simulate_noc(segmenter: Segmenter, sample: Sample, max_clicks: int = 20) -> list[float]:
    """IoU after each of ``max_clicks`` simulated clicks on ``sample`` (the full NoC protocol)."""
    return run_noc(segmenter, sample, max_clicks).ious


def run_noc(
    segmenter: Segmenter,
    sample: Sample,
    max_clicks: int = 20,
    stop_iou: Optional[float] = None,
    min_clicks: int = 5,
) -> NocRun:
    """Run the NoC protocol on one sample; ``ious`` has one entry per click, ``max_clicks`` long.

    Starts from an empty mask; at each step the simulator clicks on the current error given all
    previous clicks, the segmenter receives all clicks so far and its previous call's logits.
    With ``stop_iou`` set, clicking stops once IoU >= stop_iou after at least ``min_clicks``
    clicks and the remaining entries repeat the last IoU: NoC at thresholds <= stop_iou and the
    IoU after clicks 1..min_clicks stay exact; drops after the stop are not seen.
    When the simulator finds no error left (a perfect mask) the remaining entries repeat too.
    """
    timing = Timing()
    episode = Episode(segmenter, EpisodeRequest(sample.image, gt=sample.gt, ignore=sample.ignore), timing=timing)
    ious: list[float] = []

    def every_click(episode: Episode, step: int, answers) -> None:
        click = first_click(answers)
        if click is None:
            return episode.stop("no error left")
        episode.advance(episode.act(episode.state, click))
        ious.append(episode.iou(episode.state))
        if stop_iou is not None and len(ious) >= min_clicks and ious[-1] >= stop_iou:
            episode.stop("stop_iou")

    drive(SimulatorPolicy(), [episode], every_click, max_clicks)
    calls = len(ious)
    fill = ious[-1] if ious else episode.iou(episode.state)
    ious.extend([fill] * (max_clicks - len(ious)))
    return NocRun(sample.name, ious, list(episode.state.clicks), timing.seconds.get("tool", 0.0), calls)


def count_drops(ious: Sequence[float], tol: float = 1e-9) -> int:
    """Number of clicks after which IoU fell (by more than ``tol``)."""
    values = np.asarray(ious, dtype=np.float64)
    return int(np.count_nonzero(np.diff(values) < -tol))


def summarize(runs: Sequence[NocRun], max_clicks: int = 20) -> dict[str, float]:
    """NoC@85/90, mean IoU after 1/3/5 clicks, total IoU drops and seconds per click over ``runs``."""
    ious = [r.ious for r in runs]
    arr = np.asarray(ious, dtype=np.float64)
    calls = sum(r.calls for r in runs)
    return {
        "samples": len(runs),
        "noc85": mean_noc(ious, 0.85, max_clicks),
        "noc90": mean_noc(ious, 0.90, max_clicks),
        "miou1": float(arr[:, 0].mean()),
        "miou3": float(arr[:, 2].mean()),
        "miou5": float(arr[:, 4].mean()),
        "iou_drops": int(sum(count_drops(r.ious) for r in runs)),
        "samples_with_drops": int(sum(count_drops(r.ious) > 0 for r in runs)),
        "s_per_click": (sum(r.seconds for r in runs) / calls) if calls else float("nan"),
    }


@dataclass
class PolicyScore:
    """A policy's episodes on held-out samples: mean IoU (gIoU) and cumulative IoU (cIoU, the paper's
    headline metric), and each sample's IoU in order."""

    miou: float
    ciou: float
    samples: int
    ious: list[float] = field(default_factory=list)

    def not_worse_than(self, other: Optional["PolicyScore"]) -> bool:
        """True when neither metric is lower than ``other``'s (always against no score at all)."""
        return other is None or (self.miou >= other.miou and self.ciou >= other.ciou)


def evaluate_policy(policy, segmenter: Segmenter, samples: Sequence[Sample], config=None) -> PolicyScore:
    """Run ``policy``'s episodes on ``samples`` in lockstep and score the masks they return.

    Each sample is its own referring expression; the ignore band is excluded from both metrics.
    """
    if not samples:
        raise ValueError("no samples to evaluate on")
    requests = [EpisodeRequest(s.image, s.expression, gt=s.gt, ignore=s.ignore) for s in samples]
    results = run_episodes(policy, segmenter, requests, config or LoopConfig())
    pairs = [intersection_union(r.mask, s.gt, s.ignore) for r, s in zip(results, samples)]
    ious = [inter / union if union else 1.0 for inter, union in pairs]
    return PolicyScore(float(np.mean(ious)), ciou([p[0] for p in pairs], [p[1] for p in pairs]), len(samples), ious)


def run_noc_set(segmenter: Segmenter, samples: Sequence[Sample], max_clicks: int = 20,
                progress: Optional[Callable[[int, int], None]] = None) -> list[NocRun]:
    """:func:`run_noc` on every sample in order (every click kept, no early stop: drops are all seen)."""
    runs = []
    for sample in samples:
        runs.append(run_noc(segmenter, sample, max_clicks))
        if progress is not None:
            progress(len(runs), len(samples))
    return runs
