"""Episodes driven by given clicks (the annotator's, from a request).

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

from .segmenters.base import Segmenter
from .types import Box, Click, EpisodeResult, Segmentation, TrajectoryStep


class StepCache:
    """LRU of Segmentations keyed by (image key, box, click prefix); bounded in entries."""

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Segmentation] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[Segmentation]:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Segmentation) -> None:
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
) -> Optional[Segmentation]:
    """Feed ``clicks`` (pixels, in order) one step at a time to the tool whose image is set, each step
    with the previous step's logits; the last step's Segmentation (None when no clicks and no box)."""
    height, width = segmenter.image_size
    clicks = [c.clamped(width, height) for c in clicks]
    box = box.clamped(width, height) if box is not None else None
    if not clicks:
        return segmenter.segment([], box) if box is not None else None
    prefix_key = (segmenter.image_key, box)
    start, previous = 0, None
    if cache is not None:  # resume from the longest finished prefix
        for n in range(len(clicks), 0, -1):
            previous = cache.get((prefix_key, tuple(clicks[:n])))
            if previous is not None:
                start = n
                break
    for n in range(start + 1, len(clicks) + 1):
        previous = segmenter.segment(clicks[:n], box, previous.logits if previous is not None else None)
        if cache is not None:
            cache.put((prefix_key, tuple(clicks[:n])), previous)
    return previous


def run_given_clicks(
    segmenter: Segmenter,
    clicks: Sequence[Click],
    box: Optional[Box] = None,
    cache: Optional[StepCache] = None,
) -> EpisodeResult:
    """Segment the image set on ``segmenter`` from ``clicks`` (in order) and an optional ``box``.

    Returns the mask after the last click ((H, W) bool), the tool's score of it and one trajectory
    step per click. No clicks and no box gives an empty mask with score 0.
    """
    height, width = segmenter.image_size
    last = replay(segmenter, clicks, box, cache)
    box = box.clamped(width, height) if box is not None else None
    if last is None:
        return EpisodeResult(np.zeros((height, width), bool), 0.0, [], None)
    steps = [TrajectoryStep(c.clamped(width, height)) for c in clicks]
    return EpisodeResult(last.mask, float(last.score), steps, box)
