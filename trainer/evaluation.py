"""The standard NoC evaluation (the standard simulator as the annotator, its clicks replayed by the service's
click path: what annotators get from ``/predict``; every click kept, IoU after each) and a policy's score on
held-out samples (its own episodes, ``run_episodes``)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.engine import EpisodeRequest
from segagent_backend.agent.episode import StepCache, run_given_clicks_stepwise
from segagent_backend.agent.loop import LoopConfig, run_episodes
from segagent_backend.agent.metrics import ciou, intersection_union, iou, mean_noc
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
    masks: list[np.ndarray] = field(default_factory=list)  # the mask after each click ((H, W) bool), if kept


def label_studio_clicks(clicks: Sequence[Click], width: int, height: int) -> list[Click]:
    """Pixel clicks as Label Studio sends them (keypoints in percent of the image, ``Click.percent``, as the
    service's own keypoint regions write them) and as ``/predict`` reads them back (``Click.from_percent``):
    the click list the model host replays (tests/service/test_eval_noc.py holds the two to the service's)."""
    return [Click.from_percent(*c.percent(width, height), c.positive, width, height) for c in clicks]


def run_noc(
    segmenter: Segmenter,
    sample: Sample,
    max_clicks: int = 20,
    stop_iou: Optional[float] = None,
    min_clicks: int = 5,
    keep_masks: bool = False,
) -> NocRun:
    """Run the NoC protocol on one sample through the service's click path; ``ious`` has one entry per
    click, ``max_clicks`` long.

    Starts from an empty mask; at each step the simulator clicks on the error of the mask the annotator
    was last given, and the whole click list goes to the tool as ``/predict`` sends it to the model host:
    in Label Studio's percent and back (:func:`label_studio_clicks`), replayed by
    ``agent.episode.run_given_clicks_stepwise`` with a step cache (``ModelHost.run_clicks``): each click
    one tool step from the previous step's state and logits. With ``stop_iou`` set, clicking stops once
    IoU >= stop_iou after at least ``min_clicks`` clicks and the remaining entries repeat the last IoU:
    NoC at thresholds <= stop_iou and the IoU after clicks 1..min_clicks stay exact; drops after the stop
    are not seen. When the simulator finds no error left (a perfect mask) the remaining entries repeat too.
    ``seconds``: time in the replay calls (the tool step, and setting the image from the embedding cache).
    ``keep_masks``: the run keeps the mask the annotator got after each click (``NocRun.masks``).
    """
    height, width = sample.gt.shape
    cache = StepCache()
    clicks: list[Click] = []
    mask = np.zeros((height, width), dtype=bool)
    ious: list[float] = []
    masks: list[np.ndarray] = []
    seconds = 0.0
    for _ in range(max_clicks):
        click = next_click(sample.gt, mask, sample.ignore, clicks)
        if click is None:
            break
        clicks.append(click)
        began = time.perf_counter()
        mask = run_given_clicks_stepwise(segmenter, sample.image, label_studio_clicks(clicks, width, height),
                                         cache=cache).mask
        seconds += time.perf_counter() - began
        ious.append(iou(mask, sample.gt, sample.ignore))
        if keep_masks:
            masks.append(mask)
        if stop_iou is not None and len(ious) >= min_clicks and ious[-1] >= stop_iou:
            break
    calls = len(ious)
    fill = ious[-1] if ious else iou(mask, sample.gt, sample.ignore)
    ious.extend([fill] * (max_clicks - len(ious)))
    return NocRun(sample.name, ious, clicks, seconds, calls, masks)


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
