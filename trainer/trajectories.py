"""Trajectory generation: ground-truth masks -> human-like click traces (segagent-protocol.md, section 6).

SegAgent's ``record_trace`` rules: from the start mask (empty, or an extra start state), the standard
simulator clicks on the current error; the tool gets ALL clicks so far (the start state's first), the
start's box and the previous call's logits; the click is recorded only when the IoU strictly
improved, otherwise the trajectory ends without it. It also ends once IoU >= ``target_iou`` (after at
least one click), after ``max_clicks`` recorded clicks, or when the simulator has no click left.

Images are (H, W, 3) uint8 RGB; masks (H, W) bool; clicks pixels with x = column, y = row.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from segagent_backend.agent.engine import Episode, EpisodeRequest, State, Timing, drive, first_click, timed
from segagent_backend.agent.metrics import iou
from segagent_backend.agent.policies.simulator import SimulatorPolicy
from segagent_backend.agent.segmenters.base import Segmenter
from segagent_backend.agent.types import Box, Click

from .datasets import Sample
from .traces import StartState, Trace, TraceStep, mask_bbox

__all__ = ["START_KINDS", "Timing", "box_start", "final_iou", "generate_traces", "make_start",
           "random_points_start", "record_trace", "sample_captions"]

START_KINDS = ("empty", "box", "points")


def _check_shapes(image: np.ndarray, gt: np.ndarray, ignore: Optional[np.ndarray]) -> None:
    if image.ndim != 3 or image.shape[:2] != gt.shape or (ignore is not None and ignore.shape != gt.shape):
        raise ValueError(f"image {image.shape}, gt {gt.shape} and ignore "
                         f"{None if ignore is None else ignore.shape} must share (H, W)")


def _start_state(episode: Episode, start: StartState) -> State:
    """The engine state of ``start``; the tool's logits kept from when it was made, else made again."""
    logits = start.logits
    if logits is None and (start.clicks or start.box):
        logits = episode.tool(list(start.clicks), episode.box, None).logits
    return State(tuple(start.clicks), start.mask.astype(bool), logits, box=episode.box)


def record_trace(segmenter: Segmenter, image: np.ndarray, gt: np.ndarray, ignore: Optional[np.ndarray] = None,
                 captions: Sequence[str] = (), image_name: str = "", start: Optional[StartState] = None,
                 target_iou: float = 0.98, max_clicks: int = 20, timing: Optional[Timing] = None) -> Trace:
    """One trajectory on ``image`` ((H, W, 3) uint8 RGB) for ``gt`` ((H, W) bool), SegAgent's rules.

    ``ignore`` ((H, W) bool) is left out of the IoU and of click placement. ``start``: the state the
    first click is made on (default: an empty mask); its clicks and box stay part of every tool call
    and of the simulator's already-clicked set, but the trace records only the new clicks.
    ``timing`` collects the seconds spent per part. Sets the image on ``segmenter`` once.
    The engine's episode with the simulator as the policy; a click is kept only while IoU strictly improves.
    """
    gt = np.asarray(gt, dtype=bool)
    ignore = None if ignore is None else np.asarray(ignore, dtype=bool)
    _check_shapes(image, gt, ignore)
    box = start.box if start is not None else None
    episode = Episode(segmenter, EpisodeRequest(image, box=box, gt=gt, ignore=ignore), timing=timing)
    if start is not None:
        episode.advance(_start_state(episode, start))
    best = iou(episode.state.mask, gt, ignore)
    steps: list[TraceStep] = []

    def improving(episode: Episode, step: int, answers) -> None:
        nonlocal best
        click = first_click(answers)
        if click is None:
            return episode.stop("no error left")
        state = episode.act(episode.state, click)
        with timed(timing, "iou"):
            value = episode.iou(state)
        if value <= best:  # no improvement: the trajectory ends, the click is not recorded
            return episode.stop("no improvement")
        episode.advance(state)
        best = value
        steps.append(TraceStep(state.clicks[-1], np.asarray(state.mask, dtype=bool), value))
        if value >= target_iou:
            episode.stop("target IoU")

    drive(SimulatorPolicy(), [episode], improving, max_clicks, timing=timing)
    kept_ignore = ignore if ignore is not None and ignore.any() else None
    return Trace(image_name, gt, list(captions), steps, start, kept_ignore)


def _tool_start(kind: str, segmenter: Segmenter, image: np.ndarray, gt: np.ndarray, ignore: Optional[np.ndarray],
                clicks: list[Click], box: Optional[Box]) -> StartState:
    segmenter.set_image(image)
    out = segmenter.segment(clicks, box)
    mask = np.asarray(out.mask, dtype=bool)
    return StartState(kind, mask, iou(mask, gt, ignore), clicks, box, out.logits)


def box_start(segmenter: Segmenter, image: np.ndarray, gt: np.ndarray,
              ignore: Optional[np.ndarray] = None) -> StartState:
    """The tool run on the ground truth's bounding box (XYXY pixels, x2/y2 = last column/row)."""
    gt = np.asarray(gt, dtype=bool)
    if not gt.any():
        raise ValueError("box start: the ground-truth mask is empty")
    x, y, w, h = mask_bbox(gt)
    return _tool_start("box", segmenter, image, gt, ignore, [], Box(x, y, x + w - 1, y + h - 1))


def _random_pixels(region: np.ndarray, count: int, rng: np.random.Generator, positive: bool) -> list[Click]:
    rows, cols = np.nonzero(region)
    picks = rng.choice(rows.size, size=min(count, rows.size), replace=False) if rows.size else []
    return [Click(float(cols[i]), float(rows[i]), positive) for i in picks]


def random_points_start(segmenter: Segmenter, image: np.ndarray, gt: np.ndarray, ignore: Optional[np.ndarray] = None,
                        *, rng: np.random.Generator, positives: int = 1, negatives: int = 1) -> StartState:
    """The tool run on ``positives`` random pixels of the object, then ``negatives`` random pixels
    outside it (uniform, distinct, never in ``ignore``; fewer when the region is smaller)."""
    gt = np.asarray(gt, dtype=bool)
    keep = ~np.asarray(ignore, dtype=bool) if ignore is not None else np.ones(gt.shape, dtype=bool)
    clicks = _random_pixels(gt & keep, positives, rng, True)
    if positives > 0 and not clicks:
        raise ValueError("points start: the ground-truth mask has no pixel outside the ignore band")
    clicks += _random_pixels(~gt & keep, negatives, rng, False)
    return _tool_start("points", segmenter, image, gt, ignore, clicks, None)


def make_start(kind: str, segmenter: Segmenter, sample: Sample, rng: np.random.Generator) -> Optional[StartState]:
    """The start state ``kind`` (one of ``START_KINDS``) for ``sample``; None for ``empty``."""
    if kind == "empty":
        return None
    if kind == "box":
        return box_start(segmenter, sample.image, sample.gt, sample.ignore)
    if kind == "points":
        return random_points_start(segmenter, sample.image, sample.gt, sample.ignore, rng=rng)
    raise ValueError(f"unknown start {kind!r}: use {', '.join(START_KINDS)}")


def sample_captions(sample: Sample) -> list[str]:
    """Every referring expression of ``sample`` (its ``captions``, else its ``expression``)."""
    return list(sample.captions) or ([sample.expression] if sample.expression else [])


def generate_traces(segmenter: Segmenter, samples: Iterable[Sample], starts: Sequence[str] = ("empty",),
                    seed: int = 0, target_iou: float = 0.98, max_clicks: int = 20, progress: bool = False,
                    timing: Optional[Timing] = None) -> list[Trace]:
    """One trace per sample and start kind, in that order (sample-major).

    Random start points of sample ``i`` come from ``np.random.default_rng((seed, i))``: the same
    seed gives the same traces whatever else runs. A trace's ``image_name`` is the sample's
    ``image_file`` (else its name). ``progress`` shows a tqdm bar on stderr.
    """
    from tqdm import tqdm

    unknown = [k for k in starts if k not in START_KINDS]
    if unknown or not starts:
        raise ValueError(f"starts {list(starts)}: give some of {', '.join(START_KINDS)}")
    samples = list(samples)
    traces: list[Trace] = []
    for index, sample in enumerate(tqdm(samples, desc="trajectories", unit="image", disable=not progress)):
        rng = np.random.default_rng((seed, index))
        for kind in starts:
            try:
                with timed(timing, "start"):
                    start = make_start(kind, segmenter, sample, rng)
            except ValueError as exc:
                raise ValueError(f"{sample.name}: {exc}") from None
            traces.append(record_trace(segmenter, sample.image, sample.gt, sample.ignore, sample_captions(sample),
                                       sample.image_file or sample.name, start, target_iou, max_clicks, timing))
    return traces


def final_iou(trace: Trace) -> float:
    """IoU of the trace's last mask: the last step's, else the start mask's (0 for an empty start)."""
    if trace.steps:
        return trace.steps[-1].iou
    return trace.start.iou if trace.start is not None else iou(np.zeros_like(trace.gt), trace.gt, trace.ignore)
