"""StaR+ (SegAgent, section 7): roll the policy out, keep its good actions, let the simulator fix the rest.

For every training sample the current policy acts from an empty mask (all samples in lockstep, one
batched policy call per step) under the serving loop's configuration: its protocol (what the policy is
shown), ``max_steps`` calls, ``candidates`` clicks proposed per step (the one that raises IoU most is
taken; the release protocol proposes one) and, under the extended protocol, its stop rule (an estimate at ``stop_iou`` or above is a stop).
An action that raised IoU becomes a training target as it is; an action that did not (or a stop while
the mask is still below the target) is replaced by the standard simulator's click from that same state,
and the rollout continues from the corrected state, so later states stay ones the policy can reach. The
estimate in every target is the TRUE IoU of the mask shown, so the PRM learns from the policy's own
states too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.engine import Episode, EpisodeRequest, drive
from segagent_backend.agent.loop import LoopConfig
from segagent_backend.agent.policies.base import Policy
from segagent_backend.agent.protocol import SEGAGENT_QWEN, Answer, CoordinateConvention, format_answer
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


def star_samples(policy: Policy, segmenter: Segmenter, samples: Sequence[Sample], loop: LoopConfig = LoopConfig(),
                 target_iou: float = 0.98, convention: CoordinateConvention = SEGAGENT_QWEN
                 ) -> tuple[list[SFTSample], list[Rollout]]:
    """The refined SFT samples of one StaR+ round and each sample's rollout, in ``samples`` order.

    The engine with ``policy`` in lockstep under ``loop`` (gt / ignore / clicks shown, for a simulator
    policy; an MLLM sees only the overlay and the text) and the StaR+ acceptance rule.
    """
    episodes = Episode.lockstep(segmenter, [EpisodeRequest(s.image, s.expression, gt=s.gt, ignore=s.ignore)
                                            for s in samples])
    rollouts = [Rollout(s.name) for s in samples]
    out: list[SFTSample] = []

    def corrected(episode: Episode, step: int, answers) -> None:
        out.extend(_step(episode, samples[episode.index], rollouts[episode.index], _proposed(answers[0], loop),
                         target_iou, convention))

    drive(policy, episodes, corrected, loop.max_steps, 1 if loop.release else loop.candidates, loop.release)
    return out, rollouts


def _proposed(answers: Sequence[Answer], loop: LoopConfig) -> list[Click]:
    """The clicks the policy proposes on a state; none when it stops (no click, or under the extended
    protocol an estimate that reaches ``stop_iou``: the loop would stop there)."""
    if not loop.release and any(a.iou_estimate is not None and a.iou_estimate >= loop.stop_iou for a in answers):
        return []
    return [a.click for a in answers if a.click is not None]


def _step(episode: Episode, s: Sample, rollout: Rollout, proposed: Sequence[Click], target_iou: float,
          convention: CoordinateConvention) -> list[SFTSample]:
    """Judge the proposed clicks on the episode's state (the best one by IoU), advance it, return the samples
    it teaches."""
    height, width = s.gt.shape
    state, before = episode.state, rollout.ious[-1]
    results = [episode.act(state, click) for click in proposed]
    result = max(results, key=episode.iou, default=None)
    if result is not None and episode.iou(result) > before:
        rollout.kept += 1
    else:
        click = next_click(s.gt, state.mask, s.ignore, state.clicks)
        if click is None:  # nothing left to fix
            episode.stop("no error left")
            return []
        rollout.replaced += 1
        result = episode.act(state, click)
    sample = SFTSample(s.image, state.mask, s.expression, format_answer(s.expression, before, result.clicks[-1], width,
                                                                         height, convention), s.name)
    after = episode.iou(result)
    if after <= before:  # even the simulator's click did not help: not a lesson, the trajectory ends
        episode.stop("no improvement")
        return []
    episode.advance(result)
    rollout.ious.append(after)
    if after >= target_iou:  # the finished mask and a stop, as in the SFT data
        episode.stop("target IoU")
        return [sample, SFTSample(s.image, result.mask, s.expression,
                                  format_answer(s.expression, after, None, width, height, convention), s.name)]
    return [sample]
