"""Data that crosses module borders in the agent layer.

Coordinates are always pixels of the ORIGINAL image, x = column, y = row, origin top-left,
(0, 0) is the centre of the top-left pixel. Masks are 2-D ``bool`` arrays of shape (H, W).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Click:
    """One click: ``x`` column and ``y`` row in pixels; ``positive`` False = negative (remove) click."""

    x: float
    y: float
    positive: bool = True

    def clamped(self, width: int, height: int) -> "Click":
        """The click moved inside an image of ``width`` x ``height`` pixels."""
        return Click(min(max(self.x, 0.0), width - 1.0), min(max(self.y, 0.0), height - 1.0), self.positive)

    @classmethod
    def from_percent(cls, x: float, y: float, positive: bool, width: int, height: int) -> "Click":
        """A click given in percent of the image (0..100, as Label Studio sends keypoints) in pixels:
        ``x * width / 100``, clamped to the image."""
        return cls(x * width / 100.0, y * height / 100.0, positive).clamped(width, height)

    def percent(self, width: int, height: int) -> tuple[float, float]:
        """``(100 * x / width, 100 * y / height)``: the click as Label Studio's keypoints hold it."""
        return 100.0 * self.x / width, 100.0 * self.y / height


@dataclass(frozen=True)
class Box:
    """An axis-aligned box prompt in pixels, XYXY: (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    def clamped(self, width: int, height: int) -> "Box":
        xs = sorted((min(max(self.x1, 0.0), width - 1.0), min(max(self.x2, 0.0), width - 1.0)))
        ys = sorted((min(max(self.y1, 0.0), height - 1.0), min(max(self.y2, 0.0), height - 1.0)))
        return Box(xs[0], ys[0], xs[1], ys[1])


@dataclass
class Segmentation:
    """What a segmenter returns for one call.

    mask:   (H, W) bool, the chosen mask at the original image size.
    logits: opaque per-segmenter state for the next call's ``prev_logits`` (SAM: the chosen
            low-res mask logits, float32 (1, 256, 256)); None when the segmenter keeps none.
    score:  the segmenter's own quality estimate of ``mask`` in [0, 1].
    """

    mask: np.ndarray
    logits: Optional[np.ndarray] = None
    score: float = 0.0


@dataclass
class TrajectoryStep:
    """One click of an episode and the mask it produced."""

    click: Click
    iou_estimate: Optional[float] = None  # the policy's estimate (0..1) of the mask it was shown; None = no estimate


@dataclass
class EpisodeResult:
    """The outcome of one episode: the mask returned, its score and the clicks that made it."""

    mask: np.ndarray
    score: float
    trajectory: list[TrajectoryStep] = field(default_factory=list)
    box: Optional[Box] = None
    malformed: int = 0  # policy answers that were not actions and could not be parsed
    stop_reason: str = ""
