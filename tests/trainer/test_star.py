"""StaR+ refinement: the policy's good clicks are kept, the others replaced by the simulator's."""
from __future__ import annotations

import numpy as np

import pytest

from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.loop import LoopConfig
from segagent_backend.agent.policies.base import Observation, Policy
from segagent_backend.agent.policies.simulator import SimulatorPolicy
from segagent_backend.agent.protocol import Answer, parse_answer
from segagent_backend.agent.segmenters import EmbeddingCache, build_segmenter
from segagent_backend.agent.types import Click
from trainer.datasets import Sample, load_grabcut
from trainer.samples import samples_from_trace
from trainer.star import star_samples
from trainer.trajectories import record_trace


class CornerClicker(Policy):
    """Always a negative click in the top-left corner: never raises IoU."""

    def propose(self, observations, k=1):
        return [[Answer(Click(0, 0, False), 0.5)] * k for _ in observations]


def test_the_simulator_as_policy_keeps_every_action_and_matches_its_trajectories(grabcut_dir):
    samples = load_grabcut(grabcut_dir)[:3]
    tool = build_segmenter("grabcut", EmbeddingCache(2**28))
    # stop_iou 1: the simulator's estimate (the true IoU) never stops it short of the target
    refined, rollouts = star_samples(SimulatorPolicy(), tool, samples, LoopConfig(max_steps=5, stop_iou=1.0))
    assert all(r.replaced == 0 and r.kept >= 1 for r in rollouts)
    assert all(np.all(np.diff(r.ious) > 0) for r in rollouts)  # every kept action raised IoU
    expected = []
    for s in samples:
        trace = record_trace(tool, s.image, s.gt, s.ignore, [s.expression], s.name, max_clicks=5)
        lessons = samples_from_trace(trace, s.image, stop_sample=True)
        # a 5-click rollout has the trajectory's first 5 clicks, and its stop only when it got there
        expected += lessons if len(trace.steps) < 5 or trace.steps[-1].iou >= 0.98 else lessons[:-1]
    names = [s.name for s in samples]
    by_sample = sorted(refined, key=lambda x: names.index(x.name))  # lockstep output is step-major
    assert [x.target for x in by_sample] == [x.target for x in expected]


def test_bad_actions_are_replaced_by_the_simulators_click(disk_image):
    image, gt = disk_image
    sample = Sample("disk", image, gt, np.zeros_like(gt), "the red disk")
    tool = build_segmenter("grabcut", EmbeddingCache(2**26))
    refined, (rollout,) = star_samples(CornerClicker(), tool, [sample], LoopConfig(max_steps=3))
    assert rollout.kept == 0 and rollout.replaced >= 1 and rollout.ious[-1] > 0.9
    first = parse_answer(refined[0].target, image.shape[1], image.shape[0])
    assert first.click == next_click(gt, np.zeros_like(gt)) and first.iou_estimate == 0.0
    assert refined[-1].target.endswith(f"Current IOU: {round(100 * rollout.ious[-1])}")  # the stop on the final mask
    assert isinstance(Observation(image, gt, "x").overlay, np.ndarray)


class Recorder(Policy):
    """The simulator's click as the LAST of k answers (the first ones: the corner), each with ``estimate``;
    records what each call was given."""

    def __init__(self, estimate: float):
        self.estimate, self.calls = estimate, []

    def propose(self, observations, k=1):
        self.calls.append((k, [o.release for o in observations]))
        good = SimulatorPolicy().propose(observations, 1)
        return [[Answer(Click(0, 0, False), self.estimate)] * (k - 1) + [Answer(g[0].click, self.estimate)]
                for g in good]


@pytest.mark.parametrize("loop, k, release", [
    (LoopConfig(max_steps=2, candidates=3, protocol="extended", stop_iou=0.99), 3, False),
    (LoopConfig(max_steps=2, candidates=3, protocol="release"), 1, True),  # the release proposes one click
])
def test_the_rollout_runs_under_the_loop_config(disk_image, loop, k, release):
    """Steps, candidates and protocol (what the policy is shown) come from the loop configuration; of k
    candidates the one that raises IoU most is kept."""
    image, gt = disk_image
    policy = Recorder(estimate=0.5)
    _, (rollout,) = star_samples(policy, build_segmenter("grabcut", EmbeddingCache(2**26)),
                                 [Sample("disk", image, gt, np.zeros_like(gt), "the red disk")], loop)
    assert len(policy.calls) <= loop.max_steps and {c[0] for c in policy.calls} == {k}
    assert all(shown == [release] for _, shown in policy.calls)
    assert rollout.kept == len(policy.calls) and rollout.replaced == 0


def test_an_estimate_at_the_stop_threshold_is_a_stop_under_the_extended_protocol(disk_image):
    """The serving stop rule: an estimate >= stop_iou stops the extended loop, so below the target it is
    corrected like a stop; the release protocol never stops on an estimate."""
    image, gt = disk_image
    sample = Sample("disk", image, gt, np.zeros_like(gt), "the red disk")

    def rollout(loop):
        tool = build_segmenter("grabcut", EmbeddingCache(2**26))
        return star_samples(Recorder(estimate=0.9), tool, [sample], loop)[1][0]

    stopped = rollout(LoopConfig(max_steps=2, stop_iou=0.8))
    assert stopped.kept == 0 and stopped.replaced >= 1
    assert rollout(LoopConfig(max_steps=2, stop_iou=0.95)).replaced == 0
    assert rollout(LoopConfig(max_steps=2, stop_iou=0.8, protocol="release")).replaced == 0
