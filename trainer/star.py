"""StaR+ (SegAgent, section 7): roll the policy out, keep its good actions, let the simulator fix the rest.

For every training sample the current policy acts greedily from an empty mask (all samples in
lockstep, one batched policy call per step). An action that raised IoU becomes a training target as
it is; an action that did not (or a stop while the mask is still below the target) is replaced by the
standard simulator's click from that same state, and the rollout continues from the corrected state,
so later states stay ones the policy can reach. The estimate in every target is the TRUE IoU of the
mask shown, so the PRM learns from the policy's own states too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.metrics import iou
from segagent_backend.agent.policies.base import Observation, Policy
from segagent_backend.agent.protocol import SEGAGENT_QWEN, CoordinateConvention, format_answer
from segagent_backend.agent.segmenters.base import Segmenter
from segagent_backend.agent.types import Click

from .datasets import Sample
from .samples import SFTSample


@dataclass
class Rollout:
    """One sample's rollout: ``ious[0]`` = 0 (empty mask), ``ious[t]`` after the t-th kept action."""

    name: str
    ious: list[float] = field(default_factory=lambda: [0.0])
    kept: int = 0  # policy actions that raised IoU
    replaced: int = 0  # policy actions replaced by the simulator's click


@dataclass
class _State:
    sample: Sample
    mask: np.ndarray
    digest: str = ""
    clicks: list[Click] = field(default_factory=list)
    logits: object = None
    done: bool = False


def star_samples(policy: Policy, segmenter: Segmenter, samples: Sequence[Sample], max_steps: int = 7,
                 target_iou: float = 0.98, convention: CoordinateConvention = SEGAGENT_QWEN
                 ) -> tuple[list[SFTSample], list[Rollout]]:
    """The refined SFT samples of one StaR+ round and each sample's rollout, in ``samples`` order."""
    states = [_State(s, np.zeros(s.gt.shape, dtype=bool)) for s in samples]
    rollouts = [Rollout(s.name) for s in samples]
    out: list[SFTSample] = []
    for step in range(max_steps):
        active = [i for i, st in enumerate(states) if not st.done]
        if not active:
            break
        # gt / ignore / clicks serve a simulator policy; an MLLM sees only the overlay and the text
        observations = [Observation(st.sample.image, st.mask, st.sample.expression, step, tuple(st.clicks), i,
                                    st.sample.gt, st.sample.ignore) for i, st in ((i, states[i]) for i in active)]
        answers = policy.propose(observations, k=1)
        for i, answer in zip(active, answers):
            out += _step(states[i], rollouts[i], answer[0].click, segmenter, target_iou, convention)
    return out, rollouts


def _step(state: _State, rollout: Rollout, proposed, segmenter: Segmenter, target_iou: float,
          convention: CoordinateConvention) -> list[SFTSample]:
    """Judge one proposed click on ``state``, advance the state, return the sample it teaches."""
    s = state.sample
    height, width = s.gt.shape
    before = rollout.ious[-1]
    segmenter.set_image(s.image, digest=state.digest or None)
    state.digest = segmenter.image_key[1]
    click, result = None, None
    if proposed is not None:
        click = proposed.clamped(width, height)
        result = segmenter.segment(state.clicks + [click], prev_logits=state.logits)
    if result is not None and iou(result.mask, s.gt, s.ignore) > before:
        rollout.kept += 1
    else:
        click = next_click(s.gt, state.mask, s.ignore, state.clicks)
        if click is None:  # nothing left to fix
            state.done = True
            return []
        rollout.replaced += 1
        result = segmenter.segment(state.clicks + [click], prev_logits=state.logits)
    sample = SFTSample(s.image, state.mask, s.expression, format_answer(s.expression, before, click, width, height,
                                                                         convention), s.name)
    after = iou(result.mask, s.gt, s.ignore)
    if after <= before:  # even the simulator's click did not help: not a lesson, the trajectory ends
        state.done = True
        return []
    state.clicks.append(click)
    state.mask, state.logits = result.mask, result.logits
    rollout.ious.append(after)
    state.done = after >= target_iou
    if state.done:  # the finished mask and a stop, as in the SFT data
        return [sample, SFTSample(s.image, state.mask, s.expression,
                                  format_answer(s.expression, after, None, width, height, convention), s.name)]
    return [sample]
