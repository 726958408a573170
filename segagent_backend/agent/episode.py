"""Episodes driven by given clicks (the annotator's, from a request): the engine with the annotator as the policy.

An interactive request carries ALL clicks so far, and may carry a mask they refine (a brush region):
the tool starts from that mask and is fed the clicks one step at a time, each step with the previous
step's logits, exactly as the annotator's mask evolved; a small LRU of finished steps (keyed by
model, image, box, start mask and the click prefix) makes the usual request, the previous clicks plus
one, cost a single tool call.

A segmenter shared by concurrent callers (a web process's threads) is used by one of them at a time:
:func:`run_given_clicks_stepwise` holds the caller's ``guard`` (e.g. a lock) for one tool step at a
time, setting the image again at the start of each step (from the embedding cache: no encoder run), so
a long replay never keeps a one-click caller waiting for more than one step; a click list already in
the step cache is answered without the guard at all.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import nullcontext
from typing import ContextManager, Hashable, Optional, Sequence

import numpy as np

from .engine import Episode, EpisodeRequest, State, replay_given, step_key
from .segmenters.base import Segmenter
from .segmenters.cache import image_digest
from .types import Box, Click, EpisodeResult, TrajectoryStep


class StepCache:
    """LRU of finished episode States keyed by ``engine.step_key``; bounded in entries."""

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
    mask: Optional[np.ndarray] = None,
) -> Optional[State]:
    """Feed ``clicks`` (pixels, in order) one step at a time to the tool whose image is set, each step
    with the previous step's logits, starting from ``mask`` ((H, W) bool) if given; the last step's
    State (None when no clicks, no box and no mask)."""
    episode = Episode(segmenter, EpisodeRequest(None, box=box, mask=mask))
    replay_given([episode], [list(clicks)], cache)
    return episode.state if clicks or box is not None or mask is not None else None


def run_given_clicks(
    segmenter: Segmenter,
    clicks: Sequence[Click],
    box: Optional[Box] = None,
    cache: Optional[StepCache] = None,
    mask: Optional[np.ndarray] = None,
) -> EpisodeResult:
    """Segment the image set on ``segmenter`` from ``clicks`` (in order), an optional ``box`` and an
    optional start ``mask`` ((H, W) bool) the clicks refine.

    Returns the mask after the last click ((H, W) bool), the tool's score of it and one trajectory
    step per click (clamped to the image). No clicks and no box gives an empty mask with score 0, or
    the start mask (score 0) when there is one.
    """
    last = replay(segmenter, clicks, box, cache, mask)
    if last is None:
        height, width = segmenter.image_size
        return EpisodeResult(np.zeros((height, width), bool), 0.0, [], None)
    return EpisodeResult(last.mask, float(last.score), [TrajectoryStep(c) for c in last.clicks], last.box)


def run_given_clicks_stepwise(
    segmenter: Segmenter,
    image: np.ndarray,
    clicks: Sequence[Click],
    box: Optional[Box] = None,
    cache: Optional[StepCache] = None,
    guard: Optional[ContextManager] = None,
    mask: Optional[np.ndarray] = None,
) -> EpisodeResult:
    """:func:`run_given_clicks` on ``image`` ((H, W, 3) uint8 RGB) for a segmenter other callers share.

    ``guard`` (a re-usable context manager, e.g. the lock that serialises use of ``segmenter``) is
    entered once per tool step, never for the whole replay: each step sets ``image`` on the tool again
    (by its digest, hashed once here: an embedding-cache hit costs no encoder run) and runs ONE click
    from the previous step's state, so between steps another caller can use the tool. The longest
    click prefix already in ``cache`` is found without the guard; when the whole click list is there,
    the guard is never entered. Same masks, scores and trajectory as :func:`run_given_clicks`; ``mask``:
    the start mask ((H, W) bool) the clicks refine, as there.
    """
    guard = guard if guard is not None else nullcontext()
    height, width = image.shape[:2]
    if mask is not None and np.shape(mask) != (height, width):
        raise ValueError(f"the start mask is {np.shape(mask)}, the image is {(height, width)} (H, W)")
    if not clicks and box is None and mask is None:
        return EpisodeResult(np.zeros((height, width), bool), 0.0, [], None)
    digest = image_digest(image)
    # the engine's step-cache key (``engine.replay_given``)
    image_key = (segmenter.cache_namespace, digest)
    key_box = box.clamped(width, height) if box is not None else None
    start_key = image_digest(np.asarray(mask, dtype=bool)) if mask is not None else None
    cache = cache if cache is not None else StepCache(max_entries=2)  # this replay's own previous step

    def key(n: int) -> Hashable:
        return step_key(image_key, key_box, start_key, clicks[:n])

    done, last = 0, None
    for n in range(len(clicks), 0, -1):  # the longest finished prefix, without the guard
        last = cache.get(key(n))
        if last is not None:
            done = n
            break
    for n in range(done + 1, len(clicks) + 1) if clicks else (0,):  # (0,): a box or a mask alone
        with guard:
            if last is not None:  # so this step resumes from it even if other callers' steps evicted it
                cache.put(key(n - 1), last)
            segmenter.set_image(image, digest)
            last = replay(segmenter, clicks[:n], box, cache, mask)
    assert last is not None
    return EpisodeResult(last.mask, float(last.score), [TrajectoryStep(c) for c in last.clicks], last.box)
