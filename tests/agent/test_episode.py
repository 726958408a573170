"""Given-clicks episodes: the tool is fed step by step; a finished prefix is never recomputed."""
from __future__ import annotations

import numpy as np

from segagent_backend.agent.episode import StepCache, run_given_clicks
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Box, Click


class CountingGrabCut(GrabCutSegmenter):
    """The real GrabCut tool, counting its calls and the click lists it was given."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def segment(self, clicks, box=None, prev_logits=None):
        self.calls.append((tuple(clicks), prev_logits is not None))
        return super().segment(clicks, box, prev_logits)


def test_steps_are_fed_in_order_with_previous_logits(disk_image):
    image, _ = disk_image
    seg = CountingGrabCut()
    seg.set_image(image)
    clicks = [Click(80, 60), Click(20, 20, False), Click(90, 70)]
    result = run_given_clicks(seg, clicks)
    assert [len(c) for c, _ in seg.calls] == [1, 2, 3]
    assert [has_prev for _, has_prev in seg.calls] == [False, True, True]
    assert [s.click for s in result.trajectory] == clicks
    assert result.mask.shape == image.shape[:2] and result.mask.dtype == bool


def test_one_more_click_costs_one_call_with_the_cache(disk_image):
    image, _ = disk_image
    seg, cache = CountingGrabCut(), StepCache()
    seg.set_image(image)
    clicks = [Click(80, 60), Click(20, 20, False), Click(90, 70)]
    first = run_given_clicks(seg, clicks[:2], cache=cache)
    seg.calls.clear()
    again = run_given_clicks(seg, clicks[:2], cache=cache)
    assert seg.calls == [] and np.array_equal(first.mask, again.mask)
    run_given_clicks(seg, clicks, cache=cache)
    assert len(seg.calls) == 1 and len(seg.calls[0][0]) == 3


def test_same_result_with_and_without_the_cache(disk_image):
    image, _ = disk_image
    clicks = [Click(80, 60), Click(100, 60, False)]
    seg, cache = GrabCutSegmenter(), StepCache()
    seg.set_image(image)
    run_given_clicks(seg, clicks[:1], cache=cache)
    cached = run_given_clicks(seg, clicks, cache=cache)
    fresh = run_given_clicks(seg, clicks)
    assert np.array_equal(cached.mask, fresh.mask)


def test_a_different_box_is_a_different_episode(disk_image):
    image, _ = disk_image
    seg, cache = CountingGrabCut(), StepCache()
    seg.set_image(image)
    run_given_clicks(seg, [Click(80, 60)], Box(40, 20, 120, 100), cache)
    run_given_clicks(seg, [Click(80, 60)], Box(0, 0, 159, 119), cache)
    assert len(seg.calls) == 2


def test_nothing_given_is_an_empty_mask(disk_image):
    seg = GrabCutSegmenter()
    seg.set_image(disk_image[0])
    result = run_given_clicks(seg, [])
    assert not result.mask.any() and result.score == 0.0


def test_clicks_outside_the_image_are_clamped(disk_image):
    seg = CountingGrabCut()
    seg.set_image(disk_image[0])
    run_given_clicks(seg, [Click(-5, 500)])
    assert seg.calls[0][0] == (Click(0.0, 119.0, True),)
