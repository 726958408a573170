"""Annotation audit: the policy's own IoU estimate (its PRM score) of masks people already made.

The policy is shown exactly what the loop shows it at a step: the image with the mask painted on it
(``Observation.overlay``, the release's arithmetic under the ``release`` protocol) and the expression.
Its answer starts with ``Current IOU: N``, its estimate of the mask it was shown; the click that
follows is not used. Masks are judged in chunks of ``batch_size``, ONE batched ``policy.propose``
call per chunk, greedy (k = 1). An answer without a readable estimate, or a malformed one (cut off,
unparsable), gives None: it is not a judgement of the mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from .policies.base import Observation, Policy

#: the step an audited mask is shown at: any step after the first (step 0 is the empty start mask)
AUDIT_STEP = 1


@dataclass
class MaskToJudge:
    """image: (H, W, 3) uint8 RGB; mask: bool, (H, W) or another size (resized to the image, nearest
    neighbour: Label Studio may have drawn it at another size); expression: what the mask should cover."""

    image: np.ndarray
    mask: np.ndarray
    expression: str


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """``mask`` as (height, width) bool (nearest neighbour when its size differs)."""
    mask = np.asarray(mask).astype(bool)
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def observation(request: MaskToJudge, index: int = 0, release: bool = False) -> Observation:
    """What the policy is shown of one mask (the loop's observation of a state holding that mask)."""
    height, width = request.image.shape[:2]
    return Observation(request.image, fit_mask(request.mask, height, width), request.expression, AUDIT_STEP,
                       episode=index, release=release)


def estimate_masks(policy: Policy, requests: Sequence[MaskToJudge], batch_size: int = 8,
                   release: bool = False) -> list[Optional[float]]:
    """The policy's IoU estimate (0..1) of each mask, in order; None where its answer gives none.

    ``ceil(len(requests) / batch_size)`` policy calls, one per chunk. ``release``: the paper's protocol
    (its overlay arithmetic and strict parser), as ``LoopConfig.release`` says for the loop.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    estimates: list[Optional[float]] = []
    for start in range(0, len(requests), batch_size):
        chunk = requests[start:start + batch_size]
        answers = policy.propose([observation(r, start + i, release) for i, r in enumerate(chunk)], 1)
        if len(answers) != len(chunk):
            raise RuntimeError(f"the policy answered {len(answers)} observations of {len(chunk)}")
        estimates += [_estimate(a[0] if a else None) for a in answers]
    return estimates


def _estimate(answer) -> Optional[float]:
    if answer is None or answer.malformed or answer.iou_estimate is None:
        return None
    value = float(answer.iou_estimate)
    return min(max(value, 0.0), 1.0) if np.isfinite(value) else None
