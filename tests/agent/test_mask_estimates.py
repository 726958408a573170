"""Annotation audit: the policy's estimate of given masks, one batched policy call per chunk."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from segagent_backend.agent.mask_estimates import MaskToJudge, estimate_masks  # noqa: E402
from segagent_backend.agent.overlay import overlay_mask  # noqa: E402
from segagent_backend.agent.policies.base import Observation, Policy  # noqa: E402
from segagent_backend.agent.protocol import Answer, parse_answer  # noqa: E402
from segagent_backend.agent.types import Click  # noqa: E402

from tests.conftest import make_disk_image  # noqa: E402


class Scripted(Policy):
    """Answers each observation with the next scripted (estimate, malformed) pair; records every call."""

    def __init__(self, script: Sequence[tuple[Optional[float], bool]]):
        super().__init__()
        self.script, self.calls = list(script), []

    def propose(self, observations: Sequence[Observation], k: int = 1):
        self.calls.append(list(observations))
        out = []
        for _ in observations:
            estimate, malformed = self.script.pop(0)
            out.append([Answer(None if malformed else Click(1, 1, True), estimate, malformed=malformed)] * k)
        return out


def masks(n: int) -> list[MaskToJudge]:
    image, truth = make_disk_image()
    out = []
    for i in range(n):
        mask = np.roll(truth, 3 * i, axis=1)
        out.append(MaskToJudge(image, mask, f"the red disk {i}"))
    return out


def test_one_batched_policy_call_for_all_masks():
    requests = masks(5)
    policy = Scripted([(0.1 * i, False) for i in range(5)])
    assert estimate_masks(policy, requests, batch_size=8) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    (call,) = policy.calls
    assert len(call) == 5
    for obs, request in zip(call, requests):  # the loop's observation of a state holding that mask
        assert obs.expression == request.expression and obs.step > 0 and obs.clicks == () and not obs.release
        assert np.array_equal(obs.mask, request.mask)
        assert np.array_equal(obs.overlay, overlay_mask(request.image, request.mask))


def test_chunks_of_batch_size_and_malformed_answers_give_none():
    policy = Scripted([(0.9, False), (None, False), (0.5, True), (0.7, False), (0.3, False)])
    assert estimate_masks(policy, masks(5), batch_size=2) == [0.9, None, None, 0.7, 0.3]
    assert [len(c) for c in policy.calls] == [2, 2, 1]
    assert estimate_masks(policy, [], batch_size=2) == [] and len(policy.calls) == 3


def test_release_protocol_shows_the_release_overlay():
    requests = masks(2)
    policy = Scripted([(0.4, False), (0.6, False)])
    estimate_masks(policy, requests, release=True)
    for obs, request in zip(policy.calls[0], requests):
        assert obs.release
        assert np.array_equal(obs.overlay, overlay_mask(request.image, request.mask, truncate=True))


def test_a_mask_of_another_size_is_fitted_to_the_image():
    image, truth = make_disk_image()
    half = truth[::2, ::2]
    policy = Scripted([(0.8, False)])
    assert estimate_masks(policy, [MaskToJudge(image, half, "the red disk")]) == [0.8]
    shown = policy.calls[0][0].mask
    assert shown.shape == truth.shape and (shown & truth).sum() / (shown | truth).sum() > 0.9


def test_the_estimate_is_read_as_the_loop_reads_it():
    text = "<ref>the red disk</ref> Current IOU: 87  Positive point: (500, 500)"
    answer = parse_answer(text, 160, 120)

    class OneAnswer(Policy):
        def propose(self, observations, k=1):
            return [[answer] for _ in observations]

    assert estimate_masks(OneAnswer(), masks(1)) == [pytest.approx(0.87)]


def test_a_tiny_real_policy_gives_a_float_or_none_per_mask(tiny_qwen2_vl, one_torch_thread):
    from segagent_backend.agent.policies import build_policy

    policy = build_policy("hf-vlm", str(tiny_qwen2_vl), device="cpu")
    requests = masks(3)
    estimates = estimate_masks(policy, requests, batch_size=3)
    assert len(estimates) == 3 and policy.stats.calls == 1
    assert all(e is None or (isinstance(e, float) and 0.0 <= e <= 1.0) for e in estimates)
