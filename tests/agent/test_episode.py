"""Given-clicks episodes: the tool is fed step by step; a finished prefix is never recomputed."""
from __future__ import annotations

import numpy as np

from segagent_backend.agent.episode import StepCache, run_given_clicks, run_given_clicks_stepwise
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Box, Click
from tests.conftest import make_disk_image


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


# ----- step by step, for a segmenter other callers share ---------------------------------------------

class CountingGuard:
    """A guard (what the model lock is to the host) counting how often it was entered; ``between``
    runs at each exit: another caller using the tool between two steps of the replay."""

    def __init__(self, between=None):
        self.entered, self.held, self.between = 0, False, between

    def __enter__(self):
        assert not self.held
        self.entered, self.held = self.entered + 1, True

    def __exit__(self, *exc):
        self.held = False
        if self.between is not None:
            self.between()


CLICKS = [Click(80, 60), Click(20, 20, False), Click(90, 70), Click(60, 50), Click(140, 100, False)]


def test_stepwise_takes_the_guard_once_per_step_and_matches_the_plain_replay(disk_image):
    image, _ = disk_image
    seg, guard = CountingGrabCut(), CountingGuard()
    stepwise = run_given_clicks_stepwise(seg, image, CLICKS, cache=StepCache(), guard=guard)
    assert guard.entered == len(CLICKS)
    assert [len(c) for c, _ in seg.calls] == [1, 2, 3, 4, 5]  # one tool call per step, never a replay
    plain = GrabCutSegmenter()
    plain.set_image(image)
    expected = run_given_clicks(plain, CLICKS)
    assert np.array_equal(stepwise.mask, expected.mask) and stepwise.score == expected.score
    assert [s.click for s in stepwise.trajectory] == [s.click for s in expected.trajectory]


def test_stepwise_without_a_cache_still_costs_one_call_per_step(disk_image):
    seg = CountingGrabCut()
    run_given_clicks_stepwise(seg, disk_image[0], CLICKS)
    assert [len(c) for c, _ in seg.calls] == [1, 2, 3, 4, 5]


def test_cached_clicks_are_answered_without_the_guard(disk_image):
    image, _ = disk_image
    seg, cache = CountingGrabCut(), StepCache()
    first = run_given_clicks_stepwise(seg, image, CLICKS[:3], cache=cache, guard=CountingGuard())
    seg.calls.clear()
    guard = CountingGuard()
    again = run_given_clicks_stepwise(seg, image, CLICKS[:3], cache=cache, guard=guard)
    assert guard.entered == 0 and seg.calls == [] and np.array_equal(first.mask, again.mask)
    more = CountingGuard()
    run_given_clicks_stepwise(seg, image, CLICKS, cache=cache, guard=more)  # two more clicks: two steps
    assert more.entered == 2 and [len(c) for c, _ in seg.calls] == [4, 5]


def test_the_plain_replay_and_the_stepwise_one_share_the_step_cache(disk_image):
    image, _ = disk_image
    seg, cache = CountingGrabCut(), StepCache()
    seg.set_image(image)
    run_given_clicks(seg, CLICKS, Box(10, 10, 150, 110), cache)  # the engine's keys
    seg.calls.clear()
    guard = CountingGuard()
    run_given_clicks_stepwise(seg, image, CLICKS, Box(10, 10, 150, 110), cache, guard)
    assert guard.entered == 0 and seg.calls == []


def test_other_callers_between_steps_change_nothing(disk_image):
    """Between two steps another caller sets ANOTHER image on the tool and segments it: each step sets
    this replay's image again and resumes from its own previous state."""
    image, _ = disk_image
    other, _ = make_disk_image(200, 150, centre=(50, 40), radius=20)
    seg, cache = GrabCutSegmenter(), StepCache(max_entries=1)  # each intruder step evicts our last one
    intruded = []

    def intruder():
        seg.set_image(other)
        intruded.append(run_given_clicks(seg, [Click(50 + len(intruded), 40)], cache=cache))

    interleaved = run_given_clicks_stepwise(seg, image, CLICKS, cache=cache, guard=CountingGuard(intruder))
    alone = run_given_clicks_stepwise(GrabCutSegmenter(), image, CLICKS)
    assert np.array_equal(interleaved.mask, alone.mask) and interleaved.score == alone.score
    assert len(intruded) == len(CLICKS)


def test_stepwise_box_alone_and_nothing_given(disk_image):
    image, _ = disk_image
    seg, guard = CountingGrabCut(), CountingGuard()
    boxed = run_given_clicks_stepwise(seg, image, [], Box(40, 20, 120, 100), guard=guard)
    assert guard.entered == 1 and len(seg.calls) == 1 and boxed.mask.any() and boxed.trajectory == []
    empty = run_given_clicks_stepwise(seg, image, [], guard=guard)
    assert guard.entered == 1 and not empty.mask.any() and empty.mask.shape == image.shape[:2]
