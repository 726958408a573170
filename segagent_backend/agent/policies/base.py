"""The one interface every policy implements: observations in, K proposed actions each out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence

import numpy as np

from ..overlay import overlay_mask
from ..protocol import Answer
from ..types import Click


@dataclass
class Observation:
    """What a policy is given at one step of one episode.

    image: (H, W, 3) uint8 RGB, the original image. mask: (H, W) bool, the mask shown (all False at
    step 0). An MLLM policy sees only ``overlay`` and ``expression``; ``clicks`` (the episode's clicks
    so far, pixels) and ``gt``/``ignore`` ((H, W) bool, training and evaluation only) serve the
    simulator and given-clicks policies.
    """

    image: np.ndarray
    mask: np.ndarray
    expression: str
    step: int = 0
    clicks: Sequence[Click] = ()
    episode: int = 0
    gt: Optional[np.ndarray] = None
    ignore: Optional[np.ndarray] = None
    release: bool = False  # the paper's protocol: the release's overlay arithmetic and strict parser
    answer_head: Optional[str] = None  # ``<ref>..</ref><box>..</box>`` re-fed after an answer with a box

    @cached_property
    def overlay(self) -> np.ndarray:
        """The image with ``mask`` painted green at alpha 0.5, (H, W, 3) uint8 RGB."""
        return overlay_mask(self.image, self.mask, truncate=self.release)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]


@dataclass
class PolicyStats:
    """Counters a policy keeps across calls (for benchmarks and the trajectory's malformed count)."""

    calls: int = 0
    answers: int = 0
    malformed: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


class Policy(ABC):
    """Proposes clicks. ``propose`` takes a batch of observations and returns, for each, ``k`` answers:
    ``k == 1`` is the greedy choice; ``k > 1`` samples (tree search). Every answer carries the
    policy's estimate of the IoU of the mask it was shown (the PRM score of that mask), or None when
    the policy has no estimate. An answer without a click means stop."""

    kind: str = "policy"

    def __init__(self):
        self.stats = PolicyStats()

    @property
    def model_version(self) -> str:
        return self.kind

    @abstractmethod
    def propose(self, observations: Sequence[Observation], k: int = 1) -> list[list[Answer]]:
        """``len(result) == len(observations)`` and ``len(result[i]) == k``."""
