"""SFT samples: one per recorded click of a trajectory and per caption.

Step t shows the policy the image with mask M_t painted on it (M_0 = the start state's mask, else
empty; M_t = the mask after click t-1) and the task text; the target is the policy's exact answer:
``<ref>{caption}</ref> Current IOU: {round(100 * IoU(M_t))}  {Positive|Negative} point: (A, B)``.

With ``stop_sample`` (off by default: the release's SFT data has none) one more sample per trajectory
shows the FINAL mask with the estimate alone (``<ref>{caption}</ref> Current IOU: 98``): a stop.
Without it the process reward model never sees a finished mask (a one-click trajectory would teach
only "Current IOU: 0"); the released parser reads an answer without a point as STOP, so a policy
trained with it learns to stop too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Optional, Sequence

import numpy as np

from segagent_backend.agent.overlay import overlay_mask
from segagent_backend.agent.protocol import SEGAGENT_QWEN, CoordinateConvention, format_answer
from segagent_backend.agent.types import Click

from .traces import Trace


@dataclass
class SFTSample:
    """image: (H, W, 3) uint8 RGB; shown: (H, W) bool, the mask painted on it; target: the answer text."""

    image: np.ndarray
    shown: np.ndarray
    expression: str
    target: str
    name: str = ""  # the sample it came from (image name / task id), for reports
    release: bool = False  # the release's overlay arithmetic (the protocol the policy will serve with)

    @property
    def overlay(self) -> np.ndarray:
        """What the policy sees: (H, W, 3) uint8 RGB."""
        return overlay_mask(self.image, self.shown, truncate=self.release)


def step_samples(image: np.ndarray, expression: str, shown: Sequence[np.ndarray], ious: Sequence[float],
                 clicks: Sequence[Optional[Click]], convention: CoordinateConvention = SEGAGENT_QWEN,
                 name: str = "") -> list[SFTSample]:
    """One sample per action: ``shown[t]`` / ``ious[t]`` is the state action ``t`` was chosen on; a
    None action is a stop (the estimate alone)."""
    height, width = image.shape[:2]
    return [SFTSample(image, mask, expression, format_answer(expression, iou, click, width, height, convention), name)
            for mask, iou, click in zip(shown, ious, clicks)]


def samples_from_trace(trace: Trace, image: np.ndarray, convention: CoordinateConvention = SEGAGENT_QWEN,
                       captions: Optional[Iterable[str]] = None, stop_sample: bool = False,
                       release: bool = False) -> list[SFTSample]:
    """Every step of ``trace`` (and with ``stop_sample`` its final stop) x every caption (``captions``
    overrides the trace's own); ``release``: overlays with the release's arithmetic."""
    if image.shape[:2] != trace.gt.shape:
        raise ValueError(f"{trace.image_name}: image {image.shape[:2]} does not match the trace's mask {trace.gt.shape}")
    first = trace.start.mask if trace.start is not None else np.zeros(trace.gt.shape, dtype=bool)
    first_iou = trace.start.iou if trace.start is not None else 0.0
    shown = [first] + [s.mask for s in trace.steps]
    ious = [first_iou] + [s.iou for s in trace.steps]
    actions: list[Optional[Click]] = [*trace.clicks, None]
    if not stop_sample:
        shown, ious, actions = shown[:-1], ious[:-1], actions[:-1]
    if not trace.steps:  # nothing was learnt on this trajectory: no stop lesson on an untouched start
        return []
    out: list[SFTSample] = []
    for caption in (list(captions) if captions is not None else trace.captions):
        out += step_samples(image, caption, shown, ious, actions, convention, trace.image_name)
    if release:
        out = [replace(s, release=True) for s in out]
    return out
