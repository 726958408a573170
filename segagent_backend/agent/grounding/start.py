"""An episode's start from text: SAM 3's instances of the expression's noun phrase, the best one chosen.

With a policy, the instances are shown to it as the loop would show a mask (``audit.estimate_masks``:
the overlay, the whole expression) and the one it rates highest is the start its clicks continue from;
its estimate is the way to tell "the man on the left" from the other men SAM 3 also found. Without a
policy (or where it gives no estimate) SAM 3's own score decides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..mask_estimates import MaskToJudge, estimate_masks
from ..policies.base import Policy
from .phrases import noun_phrase
from .sam3_text import Instance, TextGrounder

__all__ = ["TextStart", "Ungroundable", "choose_instance", "text_start", "MAX_CANDIDATES"]

#: instances the policy judges at most (the best-scored ones): one batched policy call
MAX_CANDIDATES = 8


class Ungroundable(ValueError):
    """SAM 3 found nothing for the expression (no noun phrase, or no instance above the threshold)."""


@dataclass(frozen=True)
class TextStart:
    """The chosen start: ``mask`` (H, W) bool, SAM 3's ``score`` of it, the policy's ``estimate`` (0..1, None
    without one), the ``phrase`` SAM 3 was given and how many ``instances`` it found."""

    mask: np.ndarray
    score: float
    estimate: Optional[float]
    phrase: str
    instances: int


def choose_instance(scores: Sequence[float], estimates: Sequence[Optional[float]]) -> int:
    """The index of the best instance: the highest policy estimate; SAM 3's score breaks ties and decides
    where no instance has an estimate."""
    if len(scores) == 0:
        raise ValueError("no instances to choose from")
    ranked = [(-1.0 if e is None else e, s) for e, s in zip(estimates, scores)]
    return max(range(len(ranked)), key=ranked.__getitem__)


def text_start(grounder: TextGrounder, policy: Optional[Policy], image: np.ndarray, expression: str,
               threshold: float, release: bool = False) -> TextStart:
    """The start mask for ``expression`` on ``image`` ((H, W, 3) uint8 RGB): SAM 3's instances of its noun
    phrase above ``threshold``, chosen by ``policy``'s estimate when given (``release``: the paper's
    overlay, as in the loop) else by SAM 3's score. Raises Ungroundable when there is none."""
    phrase = noun_phrase(expression)
    if not phrase:
        raise Ungroundable(f"the expression {expression!r} has no noun phrase for SAM 3 to find")
    instances: list[Instance] = grounder.instances(image, phrase, threshold, MAX_CANDIDATES)
    if not instances:
        raise Ungroundable(f"SAM 3 found no {phrase!r} (from {expression!r}) scoring above {threshold:g} in the image")
    estimates: list[Optional[float]] = [None] * len(instances)
    if policy is not None and len(instances) > 1:
        judged = [MaskToJudge(image, instance.mask, expression) for instance in instances]
        estimates = estimate_masks(policy, judged, MAX_CANDIDATES, release)
    best = choose_instance([i.score for i in instances], estimates)
    return TextStart(instances[best].mask, instances[best].score, estimates[best], phrase, len(instances))
