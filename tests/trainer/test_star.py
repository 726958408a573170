"""StaR+ refinement: the policy's good clicks are kept, the others replaced by the simulator's."""
from __future__ import annotations

import numpy as np

from segagent_backend.agent.clicker import next_click
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
    refined, rollouts = star_samples(SimulatorPolicy(), tool, samples, max_steps=5)
    assert all(r.replaced == 0 and r.kept >= 1 for r in rollouts)
    assert all(np.all(np.diff(r.ious) > 0) for r in rollouts)  # every kept action raised IoU
    expected = []
    for s in samples:
        trace = record_trace(tool, s.image, s.gt, s.ignore, [s.expression], s.name, max_clicks=5)
        lessons = samples_from_trace(trace, s.image, stop_sample=True)
        # a 5-click rollout has the trajectory's first 5 clicks, and its stop only when it got there
        expected += lessons if len(trace.steps) < 5 or trace.steps[-1].iou >= 0.98 else lessons[:-1]
    names = [s.name for s in samples]
    by_sample = sorted(refined, key=lambda x: names.index(x.source))  # lockstep output is step-major
    assert [x.target for x in by_sample] == [x.target for x in expected]


def test_bad_actions_are_replaced_by_the_simulators_click(disk_image):
    image, gt = disk_image
    sample = Sample("disk", image, gt, np.zeros_like(gt), "the red disk")
    tool = build_segmenter("grabcut", EmbeddingCache(2**26))
    refined, (rollout,) = star_samples(CornerClicker(), tool, [sample], max_steps=3)
    assert rollout.kept == 0 and rollout.replaced >= 1 and rollout.ious[-1] > 0.9
    first = parse_answer(refined[0].target, image.shape[1], image.shape[0])
    assert first.click == next_click(gt, np.zeros_like(gt)) and first.iou_estimate == 0.0
    assert refined[-1].target.endswith(f"Current IOU: {round(100 * rollout.ious[-1])}")  # the stop on the final mask
    assert isinstance(Observation(image, gt, "x").overlay, np.ndarray)
