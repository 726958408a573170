"""Episodes driven by given clicks (the annotator's, from a request): the engine with the annotator as the policy.

An interactive request carries ALL clicks so far. The tool is fed them one step at a time, each
step with the previous step's logits, exactly as the annotator's mask evolved; a small LRU of
finished steps (keyed by model, image, box and the click prefix) makes the usual request, the
previous clicks plus one, cost a single tool call.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable, Optional, Sequence

import numpy as np

from .engine import Episode, EpisodeRequest, State, replay_given
from .segmenters.base import Segmenter
from .types import Box, Click, EpisodeResult, TrajectoryStep


class StepCache:
    """LRU of finished episode States keyed by (image key, box, click prefix); bounded in entries."""

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, State] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[State]:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: State) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)


def replay(
    segmenter: Segmenter,
    clicks: Sequence[Click],
    box: Optional[Box] = None,
    cache: Optional[StepCache] = None,
) -> Optional[State]:
    """Feed ``clicks`` (pixels, in order) one step at a time to the tool whose image is set, each step
    with the previous step's logits; the last step's State (None when no clicks and no box)."""
    episode = Episode(segmenter, EpisodeRequest(None, box=box))
    replay_given([episode], [list(clicks)], cache)
    return episode.state if clicks or box is not None else None


def run_given_clicks(
    segmenter: Segmenter,
    clicks: Sequence[Click],
    box: Optional[Box] = None,
    cache: Optional[StepCache] = None,
) -> EpisodeResult:
    """Segment the image set on ``segmenter`` from ``clicks`` (in order) and an optional ``box``.

    Returns the mask after the last click ((H, W) bool), the tool's score of it and one trajectory
    step per click (clamped to the image). No clicks and no box gives an empty mask with score 0.
    """
    last = replay(segmenter, clicks, box, cache)
    if last is None:
        height, width = segmenter.image_size
        return EpisodeResult(np.zeros((height, width), bool), 0.0, [], None)
    return EpisodeResult(last.mask, float(last.score), [TrajectoryStep(c) for c in last.clicks], last.box)
