"""The episode loop: lockstep batching, PRM stop and selection, tree search, refinement, bad answers."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.loop import EpisodeRequest, LoopConfig, run_episodes
from segagent_backend.agent.metrics import iou
from segagent_backend.agent.policies.base import Observation, Policy
from segagent_backend.agent.policies.given import GivenClicksPolicy
from segagent_backend.agent.policies.simulator import SimulatorPolicy
from segagent_backend.agent.protocol import Answer
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Click
from trainer.datasets import load_grabcut

NAMES = ["106024", "271008", "music"]


@pytest.fixture(scope="module")
def samples(grabcut_dir):
    return load_grabcut(grabcut_dir, names=NAMES)


def requests_for(samples) -> list[EpisodeRequest]:
    return [EpisodeRequest(s.image, s.expression, gt=s.gt, ignore=s.ignore) for s in samples]


class Recording(Policy):
    """Wraps a policy and records what it was asked, to check the loop's calls."""

    def __init__(self, inner: Policy):
        super().__init__()
        self.inner, self.batches = inner, []

    def propose(self, observations: Sequence[Observation], k: int = 1):
        self.batches.append([(o.episode, o.step, tuple(o.clicks), o.mask.copy()) for o in observations])
        return self.inner.propose(observations, k)


def test_simulator_episodes_follow_the_simulator_rules(samples):
    policy = Recording(SimulatorPolicy())
    results = run_episodes(policy, GrabCutSegmenter(), requests_for(samples), LoopConfig(max_steps=5, stop_iou=0.99))
    for index, (sample, result) in enumerate(zip(samples, results)):
        asked = [entry for batch in policy.batches for entry in batch if entry[0] == index]
        for (_, _, clicks, mask), (_, _, next_clicks, _) in zip(asked, asked[1:]):
            expected = next_click(sample.gt, mask, sample.ignore, clicks)
            assert next_clicks == clicks + (expected,)  # each click: the simulator's on the mask shown
        assert iou(result.mask, sample.gt, sample.ignore) == pytest.approx(result.score)  # oracle PRM
        assert result.score == max(r for r in [iou(e[3], sample.gt, sample.ignore) for e in asked])


def test_lockstep_gives_the_same_results_as_one_by_one_with_one_call_per_step(samples):
    config = LoopConfig(max_steps=4, stop_iou=0.97)
    policy = Recording(SimulatorPolicy())
    together = run_episodes(policy, GrabCutSegmenter(), requests_for(samples), config)
    alone = [run_episodes(SimulatorPolicy(), GrabCutSegmenter(), [r], config)[0] for r in requests_for(samples)]
    for a, b in zip(together, alone):
        assert np.array_equal(a.mask, b.mask) and a.trajectory == b.trajectory and a.score == b.score
    steps = max(len(r.trajectory) for r in together) + 1
    assert len(policy.batches) <= steps and len(policy.batches[0]) == len(samples)


class Scripted(Policy):
    """Proposes fixed clicks per step; its estimate of a mask is the true IoU (an oracle PRM)."""

    def __init__(self, proposals_by_step, estimates=None):
        super().__init__()
        self.proposals_by_step, self.estimates = proposals_by_step, estimates

    def propose(self, observations, k=1):
        out = []
        for o in observations:
            clicks = self.proposals_by_step[min(len(o.clicks), len(self.proposals_by_step) - 1)]
            estimate = self.estimates[len(o.clicks)] if self.estimates else iou(o.mask, o.gt)
            out.append([Answer(c, estimate) for c in clicks[:k]])
        return out


def disk_request(disk_image) -> EpisodeRequest:
    image, truth = disk_image
    return EpisodeRequest(image, "the red disk", gt=truth)


def test_tree_search_keeps_the_candidate_the_prm_prefers(disk_image):
    bad, good = Click(5, 5), Click(80, 60)  # background corner vs the disk's centre
    policy = Scripted([[bad, good, bad]])
    greedy = run_episodes(policy, GrabCutSegmenter(), [disk_request(disk_image)], LoopConfig(max_steps=1, candidates=1))[0]
    search = run_episodes(policy, GrabCutSegmenter(), [disk_request(disk_image)], LoopConfig(max_steps=1, candidates=3))[0]
    truth = disk_image[1]
    assert search.trajectory[0].click == good
    # greedy followed the bad click; its mask scored the same as the empty start: the later of equals is kept
    assert iou(search.mask, truth) > 0.85 > iou(greedy.mask, truth) and [s.click for s in greedy.trajectory] == [bad]


def test_the_step_with_the_highest_estimate_is_returned(disk_image):
    clicks = [[Click(80, 60)], [Click(5, 5)], [Click(150, 110)], [Click(10, 100)]]
    result = run_episodes(Scripted(clicks, estimates=[0.0, 0.8, 0.6, 0.5, 0.4]), GrabCutSegmenter(),
                          [disk_request(disk_image)], LoopConfig(max_steps=4, stop_iou=0.99, patience=10))[0]
    assert result.score == 0.8 and [s.click for s in result.trajectory] == [Click(80, 60)]
    assert [s.iou_estimate for s in result.trajectory] == [0.0]  # the estimate of the mask it was chosen on
    assert iou(result.mask, disk_image[1]) > 0.85


@pytest.mark.parametrize("estimates,config,reason", [
    ([0.0, 0.96], LoopConfig(stop_iou=0.95), "stop_iou"),
    ([0.0, 0.5, 0.4, 0.3, 0.2, 0.1], LoopConfig(stop_iou=0.99, patience=2), "no better estimate"),
    ([0.0, 0.1, 0.2, 0.3], LoopConfig(max_steps=3, stop_iou=0.99), "max steps"),
])
def test_stop_rules(disk_image, estimates, config, reason):
    clicks = [[Click(80, 60)], [Click(70, 60)], [Click(90, 60)], [Click(80, 70)], [Click(80, 50)], [Click(75, 55)]]
    result = run_episodes(Scripted(clicks, estimates), GrabCutSegmenter(), [disk_request(disk_image)], config)[0]
    assert reason in result.stop_reason


class Garbage(Policy):
    def propose(self, observations, k=1):
        return [[Answer(None, None, "lorem ipsum", malformed=True)] * k for _ in observations]


def test_garbage_answers_stop_with_the_best_mask_so_far_and_are_counted(disk_image):
    image, truth = disk_image
    request = EpisodeRequest(image, "the red disk", clicks=[Click(80, 60)])  # refinement: a mask exists
    result = run_episodes(Garbage(), GrabCutSegmenter(), [request], LoopConfig(candidates=2))[0]
    assert result.stop_reason == "malformed answer" and result.malformed == 2
    assert iou(result.mask, truth) > 0.85


def test_refinement_continues_from_the_annotators_clicks(disk_image):
    image, truth = disk_image
    given = [Click(80, 60), Click(5, 5, False)]
    request = EpisodeRequest(image, "the red disk", clicks=given, gt=truth)
    result = run_episodes(SimulatorPolicy(), GrabCutSegmenter(), [request], LoopConfig(max_steps=2, stop_iou=1.0))[0]
    assert [s.click for s in result.trajectory[:2]] == given
    assert [s.iou_estimate for s in result.trajectory[:2]] == [None, None]


def test_given_clicks_policy_replays_the_annotator(disk_image):
    image, _ = disk_image
    clicks = [Click(80, 60), Click(5, 5, False)]
    result = run_episodes(GivenClicksPolicy([clicks]), GrabCutSegmenter(), [EpisodeRequest(image, "x")])[0]
    assert [s.click for s in result.trajectory] == clicks and result.stop_reason == "policy stopped"


def test_each_image_is_hashed_once_per_episode_in_lockstep(samples, monkeypatch):
    from segagent_backend.agent.segmenters import base

    real_digest, hashed = base.image_digest, []

    def counting_digest(image):
        hashed.append(1)
        return real_digest(image)

    monkeypatch.setattr(base, "image_digest", counting_digest)
    policy = Recording(SimulatorPolicy())
    run_episodes(policy, GrabCutSegmenter(), requests_for(samples), LoopConfig(max_steps=3, stop_iou=1.0, patience=9))
    assert len(policy.batches) >= 3  # several lockstep steps, each switching between the three images
    assert len(hashed) == 3


def test_the_extended_rule_returns_the_latest_of_the_best_estimates():
    from segagent_backend.agent.loop import extended_choice

    assert extended_choice([0.2, 0.9, 0.5]) == 1
    assert extended_choice([0.2, 0.9, 0.9, 0.5]) == 2  # equal estimates: the later mask holds more clicks
    assert extended_choice([None, 0.1, None]) == 1 and extended_choice([None, None]) == 1
