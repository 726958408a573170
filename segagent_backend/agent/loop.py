"""The policy loop on the episode engine (``engine.drive``): state = (image, text, clicks, mask, tool
logits), action = click, tool = segmenter, stop = the policy's own IoU estimate (PRM).

Many episodes advance in lockstep: at every step ONE batched policy call evaluates every node of
every active episode. A node is a mask to be judged; the policy's answer on it gives both the
node's PRM score (``Current IOU`` of the mask it was shown) and its next proposals. With
``candidates`` K > 1 this is SegAgent's heuristic greedy tree search: each of the K sampled clicks
of the chosen node is run through the tool, the next call scores all K children and proposes their
continuations, and the best child is kept. K = 1 is greedy decoding. The returned mask is the
chosen node with the highest estimate over all steps.

Two protocols. ``release`` is the paper's evaluation code exactly: ``max_steps`` policy calls, no
early stop (an answer without a readable click ends the episode), greedy, and the mask chosen as the
release chooses it (:func:`release_choice`). ``extended`` adds the PRM stop threshold, patience,
tree search and the later of equal estimates.

A request with a start mask (``EpisodeRequest.mask``) is a refinement: the policy's first observation
is that mask painted on the image, the tool continues from it, and (extended) the start mask itself is
returned when no click earns a higher estimate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .engine import Episode, EpisodeRequest, State, drive, replay_given
from .policies.base import Policy
from .protocol import Answer, answer_head, box_pixels, release_estimates
from .segmenters.base import Segmenter
from .types import Click, EpisodeResult, TrajectoryStep

__all__ = ["EpisodeRequest", "LoopConfig", "PROTOCOLS", "Protocol", "extended_choice", "release_choice", "release_pick",
           "run_episodes"]


@dataclass(frozen=True)
class Protocol:
    """One protocol's meaning and the decoding its policies use unless told otherwise."""

    help: str
    decoding: str  # a key of ``policies.DECODINGS``


# the one table of protocols by name (LoopConfig.protocol)
PROTOCOLS: dict[str, Protocol] = {
    "release": Protocol("the paper's evaluation rules exactly: a policy call at every step up to the limit, no "
                        "early stop, the release's mask selection, parser and overlay", "free"),
    "extended": Protocol("PRM stop, patience, tree search", "grammar"),
}


@dataclass(frozen=True)
class LoopConfig:
    """max_steps: policy clicks at most (7 for referring segmentation, 11 for high quality).
    candidates: K clicks sampled per step (1 = greedy). stop_iou: stop once the estimate of the
    chosen mask reaches it. patience: stop after this many steps without a better estimate."""

    max_steps: int = 7
    candidates: int = 1
    stop_iou: float = 0.95
    patience: int = 3
    protocol: str = "extended"  # or "release": the paper's rules (candidates, stop_iou, patience unused)

    @property
    def release(self) -> bool:
        return self.protocol == "release"


@dataclass
class _Node:
    """A judged state: the policy's estimate of its mask (PRM score) and its proposals."""

    state: State
    estimate: Optional[float] = None
    proposals: list[Answer] = field(default_factory=list)


@dataclass
class _Search:
    """One episode's search: the chosen node of every step, the last judged nodes, malformed answers."""

    given: int
    path: list[_Node] = field(default_factory=list)
    nodes: list[_Node] = field(default_factory=list)
    malformed: int = 0


def run_episodes(
    policy: Policy,
    segmenter: Segmenter,
    requests: Sequence[EpisodeRequest],
    config: LoopConfig = LoopConfig(),
) -> list[EpisodeResult]:
    """Run ``requests`` in lockstep; one EpisodeResult each, in order."""
    episodes = Episode.lockstep(segmenter, requests)
    # the root: the start mask (refinement), then the annotator's clicks and/or box
    replay_given(episodes, [r.clicks for r in requests])
    searches = [_Search(len(e.state.clicks)) for e in episodes]
    # the release makes max_steps calls and never judges the mask after the last click
    calls = config.max_steps if config.release else config.max_steps + 1

    def search_step(episode: Episode, step: int, answers: list[list[Answer]]) -> None:
        """Judge the frontier, keep its best node, stop or expand that node into the next frontier."""
        search = searches[episode.index]
        search.nodes = [_judged(state, node_answers) for state, node_answers in zip(episode.frontier, answers)]
        search.malformed += sum(a.malformed for node_answers in answers for a in node_answers)
        best = max(search.nodes, key=_estimate_key)  # the first of equals
        search.path.append(best)
        reason = "max steps" if config.release and step == calls - 1 else (
            "" if config.release else _stop_reason(search.path, step, config))
        if reason:
            if config.release and step == 0:  # one call: the release still returns the mask after its click
                search.nodes = [_Node(child, None, []) for child in _expand(episode, best)]
            return episode.stop(reason)
        episode.frontier = _expand(episode, best)
        if not episode.frontier:
            search.nodes = []
            malformed = all(a.malformed for a in best.proposals)
            episode.stop("malformed answer" if malformed else "policy stopped")

    drive(policy, episodes, search_step, calls, 1 if config.release else config.candidates, config.release)
    return [(_release_result if config.release else _result)(e, s) for e, s in zip(episodes, searches)]


def _judged(state: State, answers: list[Answer]) -> _Node:
    """The node's PRM score: the mean of its answers' estimates (None when none has one)."""
    estimates = [a.iou_estimate for a in answers if a.iou_estimate is not None]
    return _Node(state, float(np.mean(estimates)) if estimates else None, list(answers))


def _stop_reason(path: list[_Node], step: int, config: LoopConfig) -> str:
    estimates = [n.estimate for n in path]
    if estimates[-1] is not None and estimates[-1] >= config.stop_iou:
        return "estimate reached stop_iou"
    known = [e for e in estimates if e is not None]
    if len(known) > config.patience and max(known[-config.patience:]) <= max(known[: -config.patience]):
        return f"no better estimate in {config.patience} steps"
    if step >= config.max_steps:
        return "max steps"
    return ""


def _expand(episode: Episode, parent: _Node) -> list[State]:
    """The children of ``parent``: its distinct proposed clicks, each run through the tool.

    An answer carrying a box (``<box>(x1,y1),(x2,y2)</box>``) gives the tool that box in this and every
    later call, and its ``<ref>..</ref><box>..</box>`` is re-fed to the policy (the release's ``use_last_box``).
    """
    answers: dict[Click, Answer] = {}
    for a in parent.proposals:  # distinct clicks in proposal order, each with its first answer
        if a.click is not None:
            answers.setdefault(a.click, a)
    children = []
    for click, answer in answers.items():
        if answer.box is None:
            children.append(episode.act(parent.state, click))
        else:
            box = box_pixels(answer.box, episode.width, episode.height)
            children.append(episode.act(parent.state, click, box, answer_head(answer.text)))
    return children


def _estimate_key(node: _Node) -> float:
    return -1.0 if node.estimate is None else node.estimate


def _result(episode: Episode, search: _Search) -> EpisodeResult:
    """The chosen node with the highest estimate, the latest of equals (the last one when the policy gives none)."""
    path = search.path
    best = path[extended_choice([n.estimate for n in path])]
    shown = {len(n.state.clicks): n.estimate for n in path}  # estimate of the mask each click was chosen on
    trajectory = [
        TrajectoryStep(click, None if i < search.given else shown.get(i))
        for i, click in enumerate(best.state.clicks)
    ]
    score = best.estimate if best.estimate is not None else best.state.score
    return EpisodeResult(best.state.mask, float(score), trajectory, best.state.box, search.malformed,
                         episode.stop_reason)


def extended_choice(estimates: Sequence[Optional[float]]) -> int:
    """The index of the mask the ``extended`` rule returns: the highest estimate, the latest of equals (when
    the PRM cannot tell two masks apart, the later one holds more clicks); None ranks lowest, so without
    any estimate the last mask is returned. ``estimates[i]``: the estimate of the mask after i clicks."""
    if not estimates:
        raise ValueError("no masks to choose from")
    return max(reversed(range(len(estimates))), key=lambda i: -1.0 if estimates[i] is None else estimates[i])


def release_choice(estimates: Sequence[Optional[float]], clicks: int) -> int:
    """How many clicks the release's returned mask holds (0 = the start mask: no click was made).

    ``estimates[i]`` is answer i's estimate of the mask shown at step i (the mask after i clicks), over the
    answers that made a click only (the release's ``pred_list``), as :func:`~.protocol.release_estimates`
    reads them; ``clicks`` masks exist after the episode. A None makes them all 0; the first argmax i wins;
    i > 0 returns the mask after click i, i = 0 the mask after the first click.
    """
    if clicks <= 0:
        return 0
    scores = [0.0] * len(estimates) if any(e is None for e in estimates) else list(estimates)
    best = int(np.argmax(scores)) if scores else 0
    return min(max(best, 1), clicks)


def release_pick(texts: Sequence[str]) -> int:
    """How many clicks the release's returned mask holds, from the texts of the answers that made a click,
    in order (its ``pred_list``; the mask after the last click exists too): 0 when there is none."""
    return release_choice(release_estimates(texts), len(texts))


def _release_result(episode: Episode, search: _Search) -> EpisodeResult:
    """The release's choice among the masks of the answers that made a click (:func:`release_pick`): an
    answer without a readable click ended the episode and is not scored; none at all returns the start."""
    path = search.path
    # the mask after each count of policy clicks (the annotator's clicks, if any, came before)
    masks = {len(n.state.clicks) - search.given: n for n in path + search.nodes}
    scored = [n.proposals[0] for n in path if n.proposals and n.proposals[0].click is not None]
    if all(a.text for a in scored):  # the release reads the texts, all together
        values = release_estimates([a.text for a in scored])
    else:  # a policy that writes no text (scripted, tests): its estimates, one unknown making all 0
        values = [0.0] * len(scored) if any(a.iou_estimate is None for a in scored) else \
            [100.0 * a.iou_estimate for a in scored]
    chosen = masks[release_choice(values, len(scored))]
    estimates = [min(max(v, 0.0), 100.0) / 100.0 if v == v else 0.0 for v in values]  # NaN: 0
    trajectory = [TrajectoryStep(click, None if i < search.given or i - search.given >= len(estimates)
                                 else estimates[i - search.given])
                  for i, click in enumerate(chosen.state.clicks)]
    # the policy's estimate of the returned mask (after a single call only the start's exists: the max)
    clicks = len(chosen.state.clicks) - search.given
    score = 0.0 if not estimates else estimates[clicks] if clicks < len(estimates) else max(estimates)
    return EpisodeResult(chosen.state.mask, float(score), trajectory, chosen.state.box, search.malformed,
                         episode.stop_reason)
