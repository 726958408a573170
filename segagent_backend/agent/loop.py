"""The episode loop: state = (image, text, clicks, mask, tool logits), action = click, tool =
segmenter, stop = the policy's own IoU estimate (PRM).

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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .episode import replay
from .policies.base import Observation, Policy
from .protocol import Answer, answer_head, box_pixels
from .segmenters.base import Segmenter
from .types import Box, Click, EpisodeResult, TrajectoryStep


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
class EpisodeRequest:
    """One episode to run. image: (H, W, 3) uint8 RGB. clicks: the annotator's clicks (pixels) the
    policy continues from (refinement). gt/ignore: (H, W) bool, for the simulator policy only."""

    image: np.ndarray
    expression: str
    box: Optional[Box] = None
    clicks: Sequence[Click] = ()
    gt: Optional[np.ndarray] = None
    ignore: Optional[np.ndarray] = None


@dataclass
class _Node:
    clicks: tuple[Click, ...]
    mask: np.ndarray
    logits: Optional[np.ndarray]
    tool_score: float = 0.0
    box: Optional[Box] = None  # the box prompt the tool got for this mask (kept by every later call)
    head: Optional[str] = None  # an answer's ``<ref>..</ref><box>..</box>``, re-fed to the policy
    estimate: Optional[float] = None
    proposals: list[Answer] = field(default_factory=list)


@dataclass
class _Episode:
    index: int
    request: EpisodeRequest
    given: int
    nodes: list[_Node]
    digest: str  # the image's content digest, hashed once per episode
    path: list[_Node] = field(default_factory=list)
    malformed: int = 0
    stop_reason: str = ""


def run_episodes(
    policy: Policy,
    segmenter: Segmenter,
    requests: Sequence[EpisodeRequest],
    config: LoopConfig = LoopConfig(),
) -> list[EpisodeResult]:
    """Run ``requests`` in lockstep; one EpisodeResult each, in order."""
    episodes = [_start(i, r, segmenter) for i, r in enumerate(requests)]
    # the release makes max_steps calls and never judges the mask after the last click
    calls = config.max_steps if config.release else config.max_steps + 1
    for step in range(calls):
        active = [e for e in episodes if not e.stop_reason]
        if not active:
            break
        _judge(policy, active, step, 1 if config.release else config.candidates, config.release)
        for episode in active:
            best = max(episode.nodes, key=_estimate_key)  # the first of equals
            episode.path.append(best)
            episode.stop_reason = "max steps" if config.release and step == calls - 1 else (
                "" if config.release else _stop_reason(episode, step, config))
            if not episode.stop_reason:
                episode.nodes = _expand(episode, best, segmenter)
                if not episode.nodes:
                    malformed = all(a.malformed for a in best.proposals)
                    episode.stop_reason = "malformed answer" if malformed else "policy stopped"
    return [_release_result(e) if config.release else _result(e) for e in episodes]


def _start(index: int, request: EpisodeRequest, segmenter: Segmenter) -> _Episode:
    """The root node: the annotator's clicks and/or box replayed through the tool, else an empty mask."""
    segmenter.set_image(request.image)
    height, width = request.image.shape[:2]
    clicks = tuple(c.clamped(width, height) for c in request.clicks)
    first = replay(segmenter, clicks, request.box)
    if first is None:
        root = _Node((), np.zeros((height, width), bool), None, box=request.box)
    else:
        root = _Node(clicks, first.mask, first.logits, float(first.score), box=request.box)
    return _Episode(index, request, len(clicks), [root], segmenter.image_key[1])


def _judge(policy: Policy, episodes: list[_Episode], step: int, k: int, release: bool = False) -> None:
    """One batched policy call over every node of every active episode: PRM score + proposals."""
    owners, observations = [], []
    for e in episodes:
        r = e.request
        for node in e.nodes:
            owners.append((e, node))
            observations.append(Observation(r.image, node.mask, r.expression, step, node.clicks, e.index, r.gt,
                                            r.ignore, release=release, answer_head=node.head))
    for (episode, node), answers in zip(owners, policy.propose(observations, k)):
        estimates = [a.iou_estimate for a in answers if a.iou_estimate is not None]
        node.estimate = float(np.mean(estimates)) if estimates else None
        node.proposals = list(answers)
        episode.malformed += sum(a.malformed for a in answers)


def _stop_reason(episode: _Episode, step: int, config: LoopConfig) -> str:
    estimates = [n.estimate for n in episode.path]
    if estimates[-1] is not None and estimates[-1] >= config.stop_iou:
        return "estimate reached stop_iou"
    known = [e for e in estimates if e is not None]
    if len(known) > config.patience and max(known[-config.patience:]) <= max(known[: -config.patience]):
        return f"no better estimate in {config.patience} steps"
    if step >= config.max_steps:
        return "max steps"
    return ""


def _expand(episode: _Episode, parent: _Node, segmenter: Segmenter) -> list[_Node]:
    """The children of ``parent``: its distinct proposed clicks, each run through the tool.

    An answer carrying a box (``<box>(x1,y1),(x2,y2)</box>``) gives the tool that box in this and every
    later call, and its ``<ref>..</ref><box>..</box>`` is re-fed to the policy (the release's ``use_last_box``).
    """
    answers: dict[Click, Answer] = {}
    for a in parent.proposals:  # distinct clicks in proposal order, each with its first answer
        if a.click is not None:
            answers.setdefault(a.click, a)
    if not answers:
        return []
    # lockstep interleaves images: switch back by the known digest (a cache hit, no re-hashing)
    segmenter.set_image(episode.request.image, episode.digest)
    height, width = episode.request.image.shape[:2]
    children = []
    for click, answer in answers.items():
        box, head = parent.box, parent.head
        if answer.box is not None:
            box, head = box_pixels(answer.box, width, height), answer_head(answer.text)
        out = segmenter.segment(parent.clicks + (click,), box, parent.logits)
        children.append(_Node(parent.clicks + (click,), out.mask, out.logits, float(out.score), box, head))
    return children


def _estimate_key(node: _Node) -> float:
    return -1.0 if node.estimate is None else node.estimate


def _result(episode: _Episode) -> EpisodeResult:
    """The chosen node with the highest estimate, the latest of equals (the last one when the policy gives none)."""
    path = episode.path
    # the latest of equal estimates: when the PRM cannot tell two masks apart, the later one holds more clicks
    best = max(reversed(path), key=_estimate_key)
    shown = {len(n.clicks): n.estimate for n in path}  # estimate of the mask each click was chosen on
    trajectory = [
        TrajectoryStep(click, None if i < episode.given else shown.get(i))
        for i, click in enumerate(best.clicks)
    ]
    score = best.estimate if best.estimate is not None else best.tool_score
    return EpisodeResult(best.mask, float(score), trajectory, best.box, episode.malformed, episode.stop_reason)


def release_choice(estimates: Sequence[Optional[float]], clicks: int) -> int:
    """How many clicks the release's returned mask holds (0 = the empty start mask).

    ``estimates[i]`` is answer i's estimate of the mask shown at step i (the mask after i clicks);
    ``clicks`` masks exist after the episode. One unreadable estimate makes them all 0; the first
    argmax i wins; i > 0 returns the mask after click i, i = 0 the mask after the first click.
    """
    scores = [0.0] * len(estimates) if any(e is None for e in estimates) else list(estimates)
    best = int(np.argmax(scores)) if scores else 0
    return min(max(best, 1), clicks)


def _release_result(episode: _Episode) -> EpisodeResult:
    path = episode.path
    # the mask after each count of policy clicks (the annotator's clicks, if any, came before)
    masks = {len(n.clicks) - episode.given: n for n in path + episode.nodes}
    chosen = masks[release_choice([n.estimate for n in path], max(masks))]
    estimates = [n.estimate for n in path]
    trajectory = [TrajectoryStep(click, None if i < episode.given or i >= len(estimates) else estimates[i])
                  for i, click in enumerate(chosen.clicks)]
    score = chosen.estimate if chosen.estimate is not None and None not in estimates else 0.0
    return EpisodeResult(chosen.mask, float(score), trajectory, chosen.box, episode.malformed, episode.stop_reason)
