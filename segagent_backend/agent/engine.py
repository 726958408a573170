"""The one episode engine: state, action (a click), tool (the segmenter), stop. The policy is the only variable.

Every click loop of the project is a caller of :func:`drive`: the MLLM loop (``loop.run_episodes``: PRM
stop, tree search), the annotator's clicks (``episode.replay``, :func:`replay_given`), trajectory
generation and NoC evaluation (the standard simulator) and StaR+ rollouts (the MLLM, corrected by the
simulator). They differ only in the policy and in their :data:`Rule`: what one step's answers do to an
episode (which click the tool gets, whether the new mask is kept, when the episode stops).

Many episodes advance in lockstep: at every step ONE batched ``policy.propose`` call judges every
frontier state of every active episode. Images are (H, W, 3) uint8 RGB, masks (H, W) bool, clicks and
boxes pixels of the original image (x = column, y = row). Clicks are clamped to the image here, once:
when they enter an episode (:meth:`Episode.act`); the request's box when the episode is built.

An episode starts from nothing, or from a given mask (refinement): the root state then holds that mask
(the policy's first observation shows it painted on the image) and the tool's state made from it
(``Segmenter.mask_prior``), so the first click continues from it.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Hashable, Iterator, Optional, Sequence

import numpy as np

from .metrics import iou
from .policies.base import Observation, Policy
from .policies.given import GivenClicksPolicy
from .protocol import Answer
from .segmenters import base
from .segmenters.base import Segmenter
from .types import Box, Click, Segmentation

log = logging.getLogger(__name__)

#: ``Episode.act``'s default: keep the box / answer head of the state acted on
KEEP = object()


@dataclass
class Timing:
    """Seconds and calls per part of an episode run: ``set_image``, ``tool`` (segment calls), the policy's
    ``kind`` (its ``propose`` calls, e.g. ``simulator``), and whatever parts a caller adds."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began
            self.calls[name] = self.calls.get(name, 0) + 1


def timed(timing: Optional[Timing], name: str) -> ContextManager:
    """``timing.part(name)``, or nothing when ``timing`` is None."""
    return timing.part(name) if timing is not None else nullcontext()


@dataclass
class EpisodeRequest:
    """One episode to run. image: (H, W, 3) uint8 RGB (None: the image already set on the tool). clicks:
    the annotator's clicks (pixels) the policy continues from (refinement). gt/ignore: (H, W) bool, for
    the simulator policy and the acceptance rules that measure IoU. mask: (H, W) bool, the mask the
    episode starts from (refinement of a given mask; the given clicks, if any, continue from it)."""

    image: Optional[np.ndarray]
    expression: str = ""
    box: Optional[Box] = None
    clicks: Sequence[Click] = ()
    gt: Optional[np.ndarray] = None
    ignore: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None


@dataclass
class State:
    """One state of an episode: the clicks so far (pixels, clamped), the mask they made ((H, W) bool),
    the tool's ``logits`` for its next call, the tool's own ``score`` of the mask, the box prompt every
    tool call gets and ``head``, an answer's ``<ref>..</ref><box>..</box>`` re-fed to the policy."""

    clicks: tuple[Click, ...]
    mask: np.ndarray
    logits: Optional[np.ndarray] = None
    score: float = 0.0
    box: Optional[Box] = None
    head: Optional[str] = None


class _Tool:
    """What the episodes sharing one segmenter know of it: the episode whose image it holds now."""

    holder: Optional["Episode"] = None


class Episode:
    """One episode: its request, the tool, and the states the next policy call judges (``frontier``).

    Building it sets the image on the tool, hashed once here: when lockstep moved the tool to another
    episode's image, the next tool call switches back by that digest. ``stop_reason`` non-empty = finished.
    The first frontier is :meth:`root`: the request's start mask, or nothing. ValueError when the start
    mask is not (H, W) of the image.
    """

    def __init__(self, segmenter: Segmenter, request: EpisodeRequest, index: int = 0,
                 timing: Optional[Timing] = None, tool: Optional[_Tool] = None):
        self.request, self.index, self.timing = request, index, timing
        self.segmenter, self._tool = segmenter, tool or _Tool()
        self._tool.holder = self
        if request.image is None:  # the image already set on the tool
            self.height, self.width = segmenter.image_size
            self.digest = segmenter.image_key[1]
        else:
            self.height, self.width = request.image.shape[:2]
            with timed(timing, "set_image"):
                self.digest = base.image_digest(request.image)
                segmenter.set_image(request.image, self.digest)
        self.box = request.box.clamped(self.width, self.height) if request.box is not None else None
        self.start: Optional[np.ndarray] = None  # the start mask, (H, W) bool
        self.start_key: Optional[str] = None  # its digest (step caches key states by it)
        if request.mask is not None:
            start = np.asarray(request.mask)
            if start.shape != (self.height, self.width):
                raise ValueError(f"the start mask is {start.shape}, the image is {(self.height, self.width)} (H, W)")
            self.start = start.astype(bool)
            self.start_key = base.image_digest(self.start)
        self.frontier: list[State] = [self.root()]
        self.stop_reason = ""

    @classmethod
    def lockstep(cls, segmenter: Segmenter, requests: Sequence[EpisodeRequest],
                 timing: Optional[Timing] = None) -> list["Episode"]:
        """One episode per request (``index`` = its position), all on one tool."""
        tool = _Tool()
        return [cls(segmenter, r, i, timing, tool) for i, r in enumerate(requests)]

    @property
    def state(self) -> State:
        """The one state a linear rule (one state per step) continues from."""
        return self.frontier[0]

    def empty(self) -> State:
        """No clicks, an all-False mask, the request's box."""
        return State((), np.zeros((self.height, self.width), dtype=bool), box=self.box)

    def root(self) -> State:
        """Where the episode starts: no clicks and the start mask with the tool's state made from it
        (``Segmenter.mask_prior``; none for an empty mask), or :meth:`empty` without a start mask. A tool
        that cannot start from a mask still shows the mask; its first click then starts afresh."""
        if self.start is None:
            return self.empty()
        logits = None
        if self.start.any():
            try:
                logits = self.segmenter.mask_prior(self.start)
            except NotImplementedError as exc:
                log.warning("%s; its first click starts without the start mask", exc)
        return State((), self.start.copy(), logits, box=self.box)

    def tool(self, clicks: Sequence[Click], box: Optional[Box], logits: Optional[np.ndarray]) -> Segmentation:
        """One segmenter call on this episode's image (switched back to by its digest when lockstep moved on)."""
        if self._tool.holder is not self:
            self.segmenter.set_image(self.request.image, self.digest)
            self._tool.holder = self
        with timed(self.timing, "tool"):
            return self.segmenter.segment(clicks, box, logits)

    def act(self, state: State, click: Click, box=KEEP, head=KEEP) -> State:
        """The action: ``click`` (clamped to the image) added to ``state``'s clicks, run through the tool
        with ``state``'s logits and ``box`` (default: ``state``'s); the new state."""
        box = state.box if box is KEEP else box
        clicks = state.clicks + (click.clamped(self.width, self.height),)
        out = self.tool(clicks, box, state.logits)
        return State(clicks, out.mask, out.logits, float(out.score), box, state.head if head is KEEP else head)

    def observe(self, state: State, step: int, release: bool = False) -> Observation:
        """What the policy is shown of ``state``."""
        r = self.request
        return Observation(r.image, state.mask, r.expression, step, state.clicks, self.index, r.gt, r.ignore,
                           release=release, answer_head=state.head)

    def iou(self, state: State) -> float:
        """True IoU of ``state``'s mask against the request's ``gt`` (``ignore`` excluded)."""
        return iou(state.mask, self.request.gt, self.request.ignore)

    def advance(self, state: State) -> None:
        """Continue from ``state`` alone."""
        self.frontier = [state]

    def stop(self, reason: str) -> None:
        self.stop_reason = reason


#: rule(episode, step, answers): ``answers[i]`` are the policy's k answers on ``episode.frontier[i]``.
#: It advances the episode: a new frontier (``advance`` / ``frontier = ...``) or ``stop``.
Rule = Callable[[Episode, int, list[list[Answer]]], None]


def drive(policy: Policy, episodes: Sequence[Episode], rule: Rule, steps: int, k: int = 1, release: bool = False,
          timing: Optional[Timing] = None) -> None:
    """Run ``episodes`` in lockstep for at most ``steps`` policy calls: each call judges every frontier
    state of every active episode (k answers each), then ``rule`` advances each episode, in order."""
    for step in range(steps):
        active = [e for e in episodes if not e.stop_reason]
        if not active:
            return
        asked = [(e, s) for e in active for s in e.frontier]
        with timed(timing, policy.kind):
            answers = policy.propose([e.observe(s, step, release) for e, s in asked], k)
        at = 0
        for episode in active:
            n = len(episode.frontier)
            rule(episode, step, answers[at:at + n])
            at += n


def step_key(image_key: Hashable, box: Optional[Box], start_key: Optional[str], clicks: Sequence[Click]) -> Hashable:
    """A step cache's key of the state after ``clicks`` (as given) on an image (the tool's ``image_key``),
    with ``box`` (clamped) and from the start mask of digest ``start_key`` (None: from nothing)."""
    return image_key, box, start_key, tuple(clicks)


def first_click(answers: list[list[Answer]]) -> Optional[Click]:
    """The click of the first answer on the first frontier state (None = stop)."""
    return answers[0][0].click


def replay_given(episodes: Sequence[Episode], clicks: Sequence[Sequence[Click]], cache=None) -> None:
    """Each episode's given ``clicks[i]`` (in order) fed to the tool one step at a time, each with the
    previous step's logits (the annotator's clicks as the policy): the frontier ends as the last state.

    The clicks continue from the episode's root (its start mask, if any). Given no clicks but a box and
    no start mask, the state is the tool run on the box alone. ``cache`` (a :class:`~.episode.StepCache`):
    finished states keyed by :func:`step_key` (image key, box, start mask digest, click prefix as given);
    each episode resumes from its longest cached prefix and stores every new step.
    """
    def key(e: Episode, n: int) -> Hashable:
        return step_key(e.segmenter.image_key, e.box, e.start_key, clicks[e.index][:n])

    for e in episodes:
        given = clicks[e.index]
        if not given and e.box is not None and e.start is None:
            out = e.tool([], e.box, None)
            e.advance(State((), out.mask, out.logits, float(out.score), e.box))
        for n in range(len(given), 0, -1) if cache is not None else ():
            found = cache.get(key(e, n))
            if found is not None:
                e.advance(found)
                break

    def accept(e: Episode, step: int, answers: list[list[Answer]]) -> None:
        click = first_click(answers)
        if click is None:
            return e.stop("given clicks replayed")
        e.advance(e.act(e.state, click))
        if cache is not None:
            cache.put(key(e, len(e.state.clicks)), e.state)

    drive(GivenClicksPolicy(clicks), episodes, accept, max((len(c) for c in clicks), default=0))
    for e in episodes:  # left active, for the caller's own policy
        e.stop_reason = ""
