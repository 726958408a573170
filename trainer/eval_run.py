"""``segagent eval``'s run: a policy's episodes on referring-segmentation samples, scored as the paper does.

Per sample (one referring sentence of one object): the mask the loop returns (``run_episodes``, the
``release`` or ``extended`` protocol of :class:`LoopConfig`), its intersection and union with the ground
truth (ignore band excluded), and the step trajectory: the mask after each click and the policy's
``Current IOU`` estimate of each mask it was shown. Over the run:

* cIoU = sum of intersections / sum of unions; gIoU = mean per-sample IoU, an empty union counting 1.0;
  scored as ours (every sample) and as the release (samples whose episode made no click dropped), one of
  them heading the summary (``scoring``), both with their counts;
* per step t = 1..max_steps: mean IoU of the mask after t clicks, and of the mask the loop's own
  selection rule picks among the masks of the first t steps (an episode that ended earlier keeps its
  last mask / its selection);
* PRM quality: MAE, Pearson and Spearman of the estimate against the true IoU (both x 100) over every
  judged mask of the run (``prm``: step 0's empty mask included; ``prm_after_clicks``: masks of >= 1 click);
* malformed-answer rate (answers that were neither a click nor a stop), mean policy calls and clicks,
  seconds per sample.

``EpisodeResult`` carries neither the masks of the steps nor the estimates of masks that were not
chosen, so the run watches the policy (every observation it is shown and every answer) and the tool
(every mask it makes) through thin wrappers and rebuilds the trajectory with the loop's rules. In the
``release`` protocol the last answer's click is run through the tool as the release does (the loop skips
that call: the mask is never scored), so the predictions hold ``max_steps`` clicks like the release's.
Masks are (H, W) bool; clicks are pixels of the original image, x = column, y = row.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from segagent_backend.agent.engine import EpisodeRequest
from segagent_backend.agent.loop import LoopConfig, extended_choice, release_pick, run_episodes
from segagent_backend.agent.metrics import ciou, intersection_union, iou
from segagent_backend.agent.policies.base import Observation, Policy
from segagent_backend.agent.protocol import Answer, box_pixels
from segagent_backend.agent.types import Box, Click, Segmentation

from .datasets import Sample
from .prm_quality import prm_quality
from .refseg import RefEntry, load_ref_sample, prediction_record
from .traces import mask_to_rle


# --- watching the policy and the tool --------------------------------------------------------

@dataclass
class _Node:
    """One judged mask: what the policy was shown (mask (H, W) bool, clicks so far) and its answers."""

    mask: np.ndarray
    clicks: tuple[Click, ...]
    answers: list[Answer]

    @property
    def estimate(self) -> Optional[float]:
        """The loop's PRM score of the node: the mean of its answers' estimates (None when none has one)."""
        values = [a.iou_estimate for a in self.answers if a.iou_estimate is not None]
        return float(np.mean(values)) if values else None


class RecordingPolicy(Policy):
    """``inner`` unchanged; every observation and its answers are kept per (episode, step)."""

    def __init__(self, inner: Policy):
        super().__init__()
        self.inner, self.kind, self.stats = inner, inner.kind, inner.stats
        self.steps: dict[int, list[list[_Node]]] = {}  # episode -> step -> judged nodes

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    def propose(self, observations: Sequence[Observation], k: int = 1) -> list[list[Answer]]:
        answers = self.inner.propose(observations, k)
        for obs, node_answers in zip(observations, answers):
            per_step = self.steps.setdefault(obs.episode, [])
            while len(per_step) <= obs.step:
                per_step.append([])
            per_step[obs.step].append(_Node(obs.mask, tuple(obs.clicks), list(node_answers)))
        return answers


class RecordingSegmenter:
    """Passes everything to ``inner`` (a Segmenter); remembers each call's output and box by (image
    object, clicks), and can make the release's last mask, the one the loop leaves out (:meth:`finish`)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: dict[tuple[int, tuple[Click, ...]], tuple[Segmentation, Optional[Box]]] = {}
        self._image = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def set_image(self, image: np.ndarray, digest: Optional[str] = None) -> None:
        self.inner.set_image(image, digest)
        self._image = id(image)

    def segment(self, clicks, box=None, prev_logits=None):
        out = self.inner.segment(clicks, box, prev_logits)
        self.calls[(self._image, tuple(clicks))] = (out, box)
        return out

    def finish(self, image: np.ndarray, clicks: tuple[Click, ...], answer: Answer) -> Optional[tuple[Click, np.ndarray]]:
        """The mask after ``answer``'s click on the state of ``clicks`` (the tool's logits and box of that
        state, the answer's box if it gives one), as the release's last step makes it; None without a click."""
        if answer.click is None:
            return None
        height, width = image.shape[:2]
        click = answer.click.clamped(width, height)
        out, box = self.calls.get((id(image), clicks), (None, None))
        if answer.box is not None:
            box = box_pixels(answer.box, width, height)
        self.set_image(image)
        return click, self.segment(clicks + (click,), box, None if out is None else out.logits).mask


# --- one sample's trajectory -----------------------------------------------------------------

def _key(node: _Node) -> float:
    return -1.0 if node.estimate is None else node.estimate


@dataclass
class Trajectory:
    """One episode as the loop ran it: ``masks[t]`` (H, W) bool after t clicks (masks[0] empty),
    ``estimates[t]`` the chosen node's estimate of masks[t] (0..1, None = none; one per policy call,
    so one fewer than masks when the last mask was never judged), ``outputs[t]`` the answer text of step t,
    ``clicks[t]`` the click that made masks[t + 1]; ``judged``: every node of every step (tree search)."""

    masks: list[np.ndarray]
    estimates: list[Optional[float]]
    outputs: list[str]
    clicks: list[Click]
    judged: list[_Node] = field(default_factory=list)

    def selected(self, steps: int, release: bool) -> int:
        """How many clicks the mask holds that the loop's rule returns after ``steps`` policy clicks."""
        if release:  # the answers of the first ``steps`` calls that made a click (the release's pred_list)
            return release_pick(self.outputs[:min(steps, len(self.clicks))])
        judged = self.estimates[: steps + 1]  # ``steps`` clicks: masks 0..steps judged
        return extended_choice(judged) if judged else 0


def rebuild(steps: list[list[_Node]], image: np.ndarray, tool: RecordingSegmenter, config: LoopConfig) -> Trajectory:
    """The chosen node of each step (the first of the highest estimates, as the loop chooses). The
    release's last answer (its ``max_steps``-th) still clicks and the tool runs, although that mask is
    never scored: the loop skips the call, this adds it (``tool.finish``) so that the trajectory and the
    predictions hold ``max_steps`` clicks as the release's do."""
    path = [max(nodes, key=_key) for nodes in steps if nodes]
    masks = [n.mask for n in path]
    outputs = [n.answers[0].text if n.answers else "" for n in path]
    clicks = [n.clicks[-1] for n in path[1:]]
    if config.release and len(path) == config.max_steps and path[-1].answers:
        last = tool.finish(image, path[-1].clicks, path[-1].answers[0])
        if last is not None:
            clicks.append(last[0])
            masks.append(last[1])
    judged = [n for nodes in steps for n in nodes]
    return Trajectory(masks, [n.estimate for n in path], outputs, clicks, judged)


# --- the run ---------------------------------------------------------------------------------

@dataclass
class SampleResult:
    """One sample's outcome. iou / intersection / union: the returned mask against the ground truth.
    step_ious[t - 1] / selected_ious[t - 1]: IoU after t clicks / of the rule's choice after t steps."""

    name: str
    image_file: str
    caption: str
    iou: float
    intersection: int
    union: int
    score: float
    clicks: int
    calls: int
    answers: int
    malformed: int
    stop_reason: str
    step_ious: list[float]
    selected_ious: list[float]
    prm: list[tuple[float, float, int]]  # (estimate, true IoU, clicks), IoUs 0..1, of every judged mask
    record: dict = field(repr=False, default_factory=dict)
    # the start mask's intersection and union with the ground truth (a text start; None without one) and
    # whether SAM 3 found anything (an empty start otherwise)
    start_intersection: Optional[int] = None
    start_union: Optional[int] = None
    grounded: bool = False

    @property
    def start_iou(self) -> Optional[float]:
        """The text start's IoU with the ground truth (an empty union counting 1.0); None without a start."""
        if self.start_union is None:
            return None
        return self.start_intersection / self.start_union if self.start_union else 1.0


@dataclass
class EvalItem:
    """A sample to be: ``load()`` returns its Sample (image, gt, ignore); ``gt_annotation`` is written to
    the predictions as ``gt_mask`` (None: the ground truth as COCO RLE)."""

    name: str
    caption: str
    image_file: str
    load: Callable[[], Sample]
    gt_annotation: object = None


def items_from_samples(samples: Iterable[Sample]) -> list[EvalItem]:
    """One item per referring expression of each (already loaded) sample; a sample without one is refused."""
    items = []
    for s in samples:
        captions = list(s.captions) or ([s.expression] if s.expression else [])
        if not captions:
            raise ValueError(f"{s.name}: no referring expression (the manifest gives none)")
        for j, caption in enumerate(captions):
            name = s.name if len(captions) == 1 else f"{s.name}.{j}"
            items.append(EvalItem(name, caption, s.image_file or s.name, lambda s=s: s))
    return items


def items_from_refs(entries: Sequence[RefEntry], images_dir: Path) -> list[EvalItem]:
    """One item per entry (sentence); consecutive entries of one image share one read of it."""
    last: dict[str, np.ndarray] = {}

    def loader(entry: RefEntry) -> Callable[[], Sample]:
        def load() -> Sample:
            sample = load_ref_sample(entry, images_dir, last.get(entry.image_name))
            last.clear()
            last[entry.image_name] = sample.image
            return sample
        return load

    return [EvalItem(e.name, e.caption, e.image_name, loader(e), e.segmentation) for e in entries]


#: the release's prediction files hold at most this many sentences of a split (``refcocog_eval.py``)
RELEASE_MAX_SAMPLES = 5000
SCORINGS = ("ours", "release")


@dataclass
class EvalRun:
    """Every sample's result, in order, and how the run was made. ``scoring``: which scores head the
    summary (``ours``: every sample, a sample without a click scores its mask; ``release``: samples without
    a click dropped, as the release's scorer does); both are always in it. ``truncated``: samples left out
    before the run (the release's first 5000 sentences)."""

    results: list[SampleResult]
    config: LoopConfig
    seconds: float
    scoring: str = "ours"
    truncated: int = 0

    def summary(self) -> dict:
        return summarize_run(self.results, self.config, self.seconds, self.scoring, self.truncated)


#: a text start: (image (H, W, 3) uint8, expression) -> the start mask ((H, W) bool), None when nothing was found
StartFn = Callable[[np.ndarray, str], Optional[np.ndarray]]


def _score(item: EvalItem, sample: Sample, result, trajectory: Trajectory, config: LoopConfig,
           start: Optional[np.ndarray] = None, started: bool = False) -> SampleResult:
    """``started``: the episode was given a text start (``start`` None: nothing found, an empty start)."""
    gt, ignore = sample.gt, sample.ignore
    inter, union = intersection_union(result.mask, gt, ignore)
    ious = [iou(m, gt, ignore) for m in trajectory.masks]
    last = len(trajectory.masks) - 1
    step_ious = [ious[min(t, last)] for t in range(1, config.max_steps + 1)]
    selected = [ious[trajectory.selected(t, config.release)] for t in range(1, config.max_steps + 1)]
    prm = [(n.estimate, iou(n.mask, gt, ignore), len(n.clicks)) for n in trajectory.judged if n.estimate is not None]
    answers = [a for n in trajectory.judged for a in n.answers]
    gt_annotation = item.gt_annotation if item.gt_annotation is not None else mask_to_rle(gt)
    record = prediction_record(item.image_file, item.caption, gt.shape[0], gt.shape[1], gt_annotation,
                               trajectory.masks[1:], trajectory.clicks, trajectory.outputs, result.box)
    if ignore.any():
        record["ignore"] = mask_to_rle(ignore)
    scored = SampleResult(item.name, item.image_file, item.caption, inter / union if union else 1.0, inter, union,
                          float(result.score), last, len(trajectory.estimates), len(answers),
                          sum(a.malformed for a in answers), result.stop_reason, step_ious, selected, prm, record)
    if started:
        start_mask = start if start is not None else np.zeros_like(gt)
        scored.start_intersection, scored.start_union = intersection_union(start_mask, gt, ignore)
        scored.grounded = start is not None
    return scored


def evaluate(policy: Policy, segmenter, items: Sequence[EvalItem], config: LoopConfig = LoopConfig(),
             batch: int = 8, progress: Optional[Callable[[int, int], None]] = None,
             start: Optional[StartFn] = None, scoring: str = "ours", truncated: int = 0) -> EvalRun:
    """Run the policy's episodes on ``items``, ``batch`` samples in lockstep at a time (images loaded
    per batch), and score each. Every item given is run (``truncated``: how many the caller left out, for
    the report). ``start``: each episode starts from the mask it gives (SAM 3's text start), and that mask
    is scored too. ``scoring``: which scores head the summary (:func:`scores`)."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if not items:
        raise ValueError("no samples to evaluate")
    results: list[SampleResult] = []
    began = time.perf_counter()
    for first in range(0, len(items), max(1, batch)):
        chunk = items[first: first + max(1, batch)]
        samples = [item.load() for item in chunk]
        # one array object per episode (a view: no copy) so that the tool's masks are told apart per episode
        images = [s.image.view() for s in samples]
        watcher, tool = RecordingPolicy(policy), RecordingSegmenter(segmenter)
        starts = [start(s.image, it.caption) if start else None for it, s in zip(chunk, samples)]
        requests = [EpisodeRequest(im, it.caption, gt=s.gt, ignore=s.ignore, mask=m)
                    for im, it, s, m in zip(images, chunk, samples, starts)]
        outcomes = run_episodes(watcher, tool, requests, config)
        for i, (item, sample, outcome) in enumerate(zip(chunk, samples, outcomes)):
            trajectory = rebuild(watcher.steps.get(i, []), images[i], tool, config)
            results.append(_score(item, sample, outcome, trajectory, config, starts[i], start is not None))
        if progress is not None:
            progress(len(results), len(items))
    return EvalRun(results, config, time.perf_counter() - began, scoring, truncated)


# --- the numbers -----------------------------------------------------------------------------

def scores(results: Sequence[SampleResult], scoring: str = "ours") -> dict:
    """cIoU and gIoU of ``results`` as ``scoring`` counts them: ``ours`` every sample; ``release`` only the
    samples whose episode made a click (the release's scorer skips an empty ``pred_list``). ``samples``:
    how many were scored, ``dropped``: how many were not."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    kept = [r for r in results if r.clicks > 0] if scoring == "release" else list(results)
    return {"samples": len(kept), "dropped": len(results) - len(kept),
            "ciou": ciou([r.intersection for r in kept], [r.union for r in kept]),
            "giou": float(np.mean([r.iou for r in kept])) if kept else float("nan")}


def summarize_run(results: Sequence[SampleResult], config: LoopConfig, seconds: float, scoring: str = "ours",
                  truncated: int = 0) -> dict:
    """The run's numbers (module docstring); IoUs 0..1. ``ciou``/``giou`` are those of ``scoring``;
    ``scores`` holds both scorings with their counts (``samples`` scored, ``dropped``)."""
    n = len(results)
    both = {name: scores(results, name) for name in SCORINGS}
    answers = sum(r.answers for r in results)
    steps = list(range(1, config.max_steps + 1))
    step_ious = np.asarray([r.step_ious for r in results], dtype=np.float64).reshape(n, len(steps))
    selected = np.asarray([r.selected_ious for r in results], dtype=np.float64).reshape(n, len(steps))
    return {
        "samples": n,
        "scoring": scoring,
        "scored_samples": both[scoring]["samples"],
        "dropped_samples": both[scoring]["dropped"],
        "ciou": both[scoring]["ciou"],
        "giou": both[scoring]["giou"],
        "scores": both,
        "per_step": {"step": steps, "iou_after_step": step_ious.mean(axis=0).tolist() if n else [],
                     "iou_selected": selected.mean(axis=0).tolist() if n else []},
        "prm": prm_quality([p[:2] for r in results for p in r.prm]),
        # the empty start mask left out (its estimate is 0 by training, its IoU 0: easy pairs)
        "prm_after_clicks": prm_quality([p[:2] for r in results for p in r.prm if p[2] > 0]),
        "answers": answers,
        "malformed_answers": sum(r.malformed for r in results),
        "malformed_rate": (sum(r.malformed for r in results) / answers) if answers else 0.0,
        "mean_calls": float(np.mean([r.calls for r in results])) if n else float("nan"),
        "mean_clicks": float(np.mean([r.clicks for r in results])) if n else float("nan"),
        "seconds": seconds,
        "seconds_per_sample": seconds / n if n else float("nan"),
        "protocol": config.protocol,
        "loop": {"max_steps": config.max_steps, "candidates": config.candidates, "stop_iou": config.stop_iou,
                 "patience": config.patience},
        "truncated": truncated > 0,
        "truncated_samples": truncated,
        **_text_start_summary(results),
    }


def _text_start_summary(results: Sequence[SampleResult]) -> dict:
    """``text_start``: cIoU / gIoU of the start masks (before the policy's clicks) and the share of samples
    SAM 3 grounded; {} for a run without text starts."""
    started = [r for r in results if r.start_union is not None]
    if not started:
        return {}
    return {"text_start": {
        "ciou": ciou([r.start_intersection for r in started], [r.start_union for r in started]),
        "giou": float(np.mean([r.start_iou for r in started])),
        "grounded": sum(r.grounded for r in started) / len(started)}}
