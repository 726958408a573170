"""The standard click simulator as a policy (training trajectories, evaluation, tests).

Its "IoU estimate" is the true IoU of the mask it was shown: an oracle PRM.
"""
from __future__ import annotations

from typing import Sequence

from ..clicker import next_click
from ..metrics import iou
from ..protocol import Answer
from .base import Observation, Policy


class SimulatorPolicy(Policy):
    kind = "simulator"

    def propose(self, observations: Sequence[Observation], k: int = 1) -> list[list[Answer]]:
        self.stats.calls += 1
        result = []
        for obs in observations:
            if obs.gt is None:
                raise ValueError("the simulator policy needs the ground-truth mask (Observation.gt)")
            shown = iou(obs.mask, obs.gt, obs.ignore)
            click = next_click(obs.gt, obs.mask, obs.ignore, obs.clicks)  # None: nothing left to fix
            result.append([Answer(click, shown)] * k)  # deterministic: k identical proposals
            self.stats.answers += k
        return result
