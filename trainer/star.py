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
from typing import Optional, Sequence

from segagent_backend.agent.clicker import next_click
from segagent_backend.agent.engine import Episode, EpisodeRequest, drive, first_click
from segagent_backend.agent.policies.base import Policy
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


def star_samples(policy: Policy, segmenter: Segmenter, samples: Sequence[Sample], max_steps: int = 7,
                 target_iou: float = 0.98, convention: CoordinateConvention = SEGAGENT_QWEN
                 ) -> tuple[list[SFTSample], list[Rollout]]:
    """The refined SFT samples of one StaR+ round and each sample's rollout, in ``samples`` order.

    The engine with ``policy`` in lockstep (greedy, gt / ignore / clicks shown, for a simulator policy;
    an MLLM sees only the overlay and the text) and the StaR+ acceptance rule.
    """
    episodes = Episode.lockstep(segmenter, [EpisodeRequest(s.image, s.expression, gt=s.gt, ignore=s.ignore)
                                            for s in samples])
    rollouts = [Rollout(s.name) for s in samples]
    out: list[SFTSample] = []

    def corrected(episode: Episode, step: int, answers) -> None:
        out.extend(_step(episode, samples[episode.index], rollouts[episode.index], first_click(answers), target_iou,
                         convention))

    drive(policy, episodes, corrected, max_steps)
    return out, rollouts


def _step(episode: Episode, s: Sample, rollout: Rollout, proposed: Optional[Click], target_iou: float,
          convention: CoordinateConvention) -> list[SFTSample]:
    """Judge one proposed click on the episode's state, advance it, return the samples it teaches."""
    height, width = s.gt.shape
    state, before = episode.state, rollout.ious[-1]
    result = episode.act(state, proposed) if proposed is not None else None
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
