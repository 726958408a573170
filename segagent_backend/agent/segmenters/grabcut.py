"""GrabCut as an interactive tool: the zero-download default segmenter (OpenCV only, no weights).

How clicks become a mask (all at a capped working resolution, ``max_side``):

* First call (no previous mask): every click is a small *sure* disk (positive = object,
  negative = background), the first positive click also gets a large *probable-object* disk
  (a fifth of the shorter side: on the GrabCut set a smaller disk often seeds only part of a
  multi-coloured object and GrabCut then drops the rest; mean IoU after 1 click 0.70 -> 0.76), a
  box (if any) makes its outside sure background; GrabCut runs on the whole image and only the
  connected components that contain a positive click are kept (stray look-alike specks elsewhere
  are not what the annotator pointed at).
* Later calls propose with GrabCut seeded by the clicks again around the new click (colour models from
  the clicks, not from a possibly wrong previous mask there; far from the click the previous mask holds:
  see Cost), in a window around the previous mask and the clicks, then
  merge the proposal into the previous mask LOCALLY, so that a click never undoes earlier work:
  a positive click only ADDS the connected region of new object pixels that contains it, a
  negative click only REMOVES the connected region of dropped pixels that contains it, both
  within reach of the click (a multiple of its distance to the previous mask's boundary: 3x
  for a positive click, 4x for a negative one, since a wrong first mask usually leaks into
  whole background blobs that 3x removed only piece by piece; on the GrabCut set 4x takes
  NoC@90 from 5.10 to 4.90 for a few more small IoU drops, and wider reaches drop more).
  Probable-object disks of later positive clicks are sized by the distance to the nearest image
  edge (precomputed and cached with the image), so a click on a thin part does not seed the
  object model with background colours. When GrabCut will not drop a region a negative click is
  on (same colours as the object: a look-alike neighbour), the part of the mask near the click
  that is clearly closer to it than to any positive click is removed instead.
* A positive click on a part of other colours than the mask (a shirt below a face) is still used:
  when the proposal adds less than half the click's probable-object disk, GrabCut runs again in the
  window seeded by that click alone and the connected region of new object pixels containing it is
  added: whole if at most the previous mask's area, else its piece within the click's reach, else
  nothing more (a larger part is more likely a leak). Figures: bench/README.md (``bench/click_used.py``).

A start mask (``mask_prior``: refinement of a given mask) is the state of a call before any click: the
first click refines it as a later click refines a previous mask, and in every call of the episode the
start mask initialises GrabCut's labels as probable object (``GC_PR_FGD``; probable background
``GC_PR_BGD`` elsewhere) instead of the clicks' disks alone, so the colour model knows the object
even when every click is negative.

A lone negative click (no positive click: a start mask or a box refined) that GrabCut will not act on
cuts by geometry against the mask's own core (its innermost pixel away from the click) instead of
against positive clicks, so it removes the click's side of the object, not most of it.

Cost (figures: ``bench/grabcut_speed.py``): a later call's GrabCut decides the click's neighbourhood
only: beyond twice the click's reach (``hold_factor``, + ``hold_margin``) its window keeps the previous
mask as sure labels, which the click may not change anyway; sure pixels cost the graph cut a fraction of
free ones, and the colour models learn from the mask the episode has made so far rather than from a first
guess of the seeds (on the GrabCut set this made clicks both cheaper and better: ``bench/README.md``).
Every GrabCut runs on a region of interest (the whole working image for a first call, the window around
mask and clicks for a later one, grown on the sides the object runs into); a later call's is downscaled
to at most ``gc_pixels`` pixels (a first call and an own-region cut, which look for a new part, to
``first_gc_pixels``); its mask comes back to the working size by a guided filter on the image
(:func:`upsample_edge_aware`: only a band around the boundary moves, onto the image's edges), and the
working mask comes back to the original size the same way; each GrabCut stops once an iteration flips
almost nothing (``gc_tol``). The graph cut itself
lives in :mod:`.grabcut_cut` (labels in, mask out). The state carries to the next click (through the step cache) the window a call had to grow and the colour
models of its GrabCut; starting GrabCut from those models (``reuse_models``, no k-means) cost NoC@90 on the
GrabCut set and is off by default.

The mask handed back is at the original size; ``logits`` carries the working-resolution mask as the
state for the next call (a :class:`GrabCutState`: (h, w) uint8, bit 0 the mask, bit 1 the start mask,
if any, with the colour models of the call's GrabCut as ``.models``; the step cache keeps it per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from ..types import Box, Click, Segmentation
from .base import Segmenter
from .cache import EmbeddingCache
from .grabcut_cut import Models, bounded_grabcut, component_at as _component_at, disk as _disk, grey as _grey, upsample_edge_aware
from .grabcut_params import GrabCutParams
from .grabcut_regions import closer_to, core, grown, hold_far, window_around


@dataclass(frozen=True)
class _Embedding:
    """The cached per-image data: the image at working size (h, w, 3) uint8 BGR and its scale."""

    image: np.ndarray
    scale: float  # working pixels per original pixel (<= 1)
    edge_dist: np.ndarray  # (h, w) float32: distance to the nearest image edge, in working pixels
    grey: np.ndarray  # (h, w) float32 grey in [0, 1] of the working image: the guide of edge-aware upsampling


#: bits of the ``logits`` state: the mask, and the start mask it was refined from (``mask_prior``)
MASK, PRIOR = 1, 2


class GrabCutState(np.ndarray):
    """The ``logits`` a call hands on: the (h, w) uint8 working mask (bits ``MASK`` | ``PRIOR``) that also
    carries ``models``, the colour models (background, foreground GMMs: two (1, 65) float64 arrays) of the
    call's last window GrabCut, for the next call of the episode to start from (through the step cache,
    which keeps each step's logits). A plain uint8 array is a state without models."""

    models: Optional[Models] = None
    roi: Optional[tuple[int, int, int, int]] = None  # a window the call had to grow: the next starts from it

    def __array_finalize__(self, obj) -> None:
        self.models = getattr(obj, "models", None)
        self.roi = getattr(obj, "roi", None)


class GrabCutSegmenter(Segmenter):
    """OpenCV GrabCut seeded by clicks and/or a box, refined locally click by click.

    Tunables: :class:`~.grabcut_params.GrabCutParams` (keyword arguments of the constructor).
    """

    #: Its score (agreement with GrabCut's unconstrained answer) does not track the mask's quality: Spearman 0.41
    #: against the true IoU over 1000 simulated clicks on the 50 GrabCut images (bench/score_quality.py), so a
    #: prediction of GrabCut alone is sent to Label Studio without ``score``.
    score_estimates_iou = False

    def __init__(self, cache: Optional[EmbeddingCache] = None, **params):
        """``params``: any field of :class:`GrabCutParams` (e.g. ``max_side=256``)."""
        super().__init__(cache)
        self.p = GrabCutParams(**params)
        # max_side, canny and blur change the embedding (working image, edge map); the rest act per call
        self.cache_namespace = f"grabcut/max_side={self.p.max_side}/canny={self.p.canny[0]},{self.p.canny[1]}/blur={self.p.blur}"
        self._emb: Optional[_Embedding] = None

    # --- embedding -------------------------------------------------------------------------
    def _encode(self, image: np.ndarray) -> tuple[object, int]:
        h, w = image.shape[:2]
        scale = min(1.0, self.p.max_side / max(h, w))
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # GrabCut is colour-space agnostic; BGR by convention
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(bgr)
        # distance to the nearest edge: how far from a click the object probably extends, used to
        # size the seed disks (a fixed radius spills over thin parts and seeds the wrong colours)
        gray = cv2.GaussianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (self.p.blur, self.p.blur), 0)
        edges = cv2.Canny(gray, self.p.canny[0], self.p.canny[1])
        edge_dist = cv2.distanceTransform((edges == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        grey = _grey(bgr)
        return _Embedding(bgr, scale, edge_dist, grey), int(bgr.nbytes + edge_dist.nbytes + grey.nbytes)

    def _use(self, embedding: object, image: np.ndarray) -> None:
        assert isinstance(embedding, _Embedding)
        self._emb = embedding
        self._image = image  # the original (RGB): the guide of the last upsampling

    # --- geometry helpers --------------------------------------------------------------------
    def _to_work(self, x: float, y: float) -> tuple[int, int]:
        """Original pixel (x = column, y = row) -> working pixel, clamped."""
        emb = self._emb
        assert emb is not None
        h, w = emb.image.shape[:2]
        xw = int(round((x + 0.5) * emb.scale - 0.5))
        yw = int(round((y + 0.5) * emb.scale - 0.5))
        return min(max(xw, 0), w - 1), min(max(yw, 0), h - 1)

    def _to_original(self, work_mask: np.ndarray) -> np.ndarray:
        """(h, w) bool working mask -> (H, W) bool mask: edge-aware upsampling guided by the original image
        (:func:`upsample_edge_aware`; bilinear, threshold 0.5, where ``guided_eps`` <= 0)."""
        H, W = self.image_size
        if work_mask.shape == (H, W):
            return work_mask.copy()
        if self.p.guided_eps <= 0:
            return cv2.resize(work_mask.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5
        image = self._image
        return upsample_edge_aware(work_mask, (H, W), lambda y0, y1, x0, x1: _grey(image[y0:y1, x0:x1]),
                                   self.p.guided_eps, self.p.guided_radius)

    def _to_work_mask(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool mask -> (h, w) bool working mask (area-weighted, threshold 0.5)."""
        emb = self._emb
        assert emb is not None
        h, w = emb.image.shape[:2]
        if mask.shape == (h, w):
            return mask.copy()
        return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5

    def mask_prior(self, mask: np.ndarray) -> np.ndarray:
        """A start mask ((H, W) bool) -> the state ``segment`` continues from: the working mask with both
        bits set (it is the mask so far and the start mask that seeds every later GrabCut)."""
        if self._emb is None:
            raise RuntimeError("set_image() must be called before mask_prior()")
        work = self._to_work_mask(self._check_prior(mask))
        return work.astype(np.uint8) * np.uint8(MASK | PRIOR)

    def _grabcut(self, window: tuple[int, int, int, int], labels: np.ndarray, iterations: int,
                 models: Optional[Models] = None, pixels: Optional[int] = None) -> tuple[np.ndarray, Optional[Models]]:
        """:func:`~.grabcut_cut.bounded_grabcut` on the working image's ``window`` ((x0, x1, y0, y1)) from
        ``labels`` ((y1-y0, x1-x0) uint8 GC_* values): the window's object mask (bool) and the colour models
        it ended with (None when it did not run). At most ``gc_pixels`` pixels (``pixels`` instead when
        given), stopped once converged (``gc_tol``); ``models`` (a previous call's) are started from only
        with ``reuse_models``."""
        emb = self._emb
        assert emb is not None
        x0, x1, y0, y1 = window
        return bounded_grabcut(emb.image[y0:y1, x0:x1], emb.grey[y0:y1, x0:x1], labels, iterations,
                               self.p.gc_pixels if pixels is None else pixels, self.p.gc_tol,
                               models if self.p.reuse_models else None, self.p.seed, self.p.guided_eps,
                               self.p.guided_radius)

    def _seed_radius(self, x: int, y: int, cap: float = np.inf, first: bool = False) -> int:
        """Radius of the probable-object disk of a positive click at working pixel (x, y), in
        working pixels; ``first``: the first positive click (sized without looking at edges)."""
        emb = self._emb
        assert emb is not None
        r0 = self.p.object_radius * min(emb.image.shape[:2])
        if self.p.adaptive_seed and first:
            r0 = self.p.first_radius * min(emb.image.shape[:2])
        elif self.p.adaptive_seed:
            r0 = min(r0, max(self.p.min_seed * r0, self.p.flip_factor * float(emb.edge_dist[y, x])))
        return int(max(self.p.sure_radius, min(r0, cap)))

    def _paint_clicks(self, labels: np.ndarray, points: Sequence[tuple[int, int, bool]], offset=(0, 0)) -> None:
        """Sure-label disks at every click (working coordinates, shifted by ``offset`` = (x0, y0))."""
        for x, y, positive in points:
            _disk(labels, x - offset[0], y - offset[1], self.p.sure_radius, cv2.GC_FGD if positive else cv2.GC_BGD)

    # --- the tool ------------------------------------------------------------------------------
    def segment(
        self,
        clicks: Sequence[Click],
        box: Optional[Box] = None,
        prev_logits: Optional[np.ndarray] = None,
    ) -> Segmentation:
        """All clicks so far (+ optional box, + the previous call's ``logits``) -> mask.

        Returns ``mask`` (H, W) bool at the original size, ``logits`` = the working-resolution mask
        (h, w) uint8 (bit 0; bit 1 the start mask, if any) to pass back as ``prev_logits``, and
        ``score`` = the agreement (IoU) between the returned mask and GrabCut's own unconstrained answer on the same window: 1 when the
        locality rule did not have to overrule GrabCut, lower when it did (a rough confidence).
        """
        H, W = self.image_size
        emb = self._emb
        assert emb is not None
        h, w = emb.image.shape[:2]
        points = [(*self._to_work(c.x, c.y), bool(c.positive)) for c in clicks]
        if not points and box is None:
            return Segmentation(np.zeros((H, W), bool), np.zeros((h, w), np.uint8), 0.0)

        prev = prior = models = roi = None
        if prev_logits is not None and np.shape(prev_logits) == (h, w):
            models = getattr(prev_logits, "models", None)
            roi = getattr(prev_logits, "roi", None)
            state = np.asarray(prev_logits).astype(np.uint8)
            prev = (state & MASK) > 0
            prior = (state & PRIOR) > 0
            prior = prior if prior.any() else None
        if prev is None or not prev.any() or not self.p.local or not points:
            # a start mask seeds a from-scratch GrabCut only while something of the mask is left
            work, raw, models = self._first(points, box, prior if prev is not None and prev.any() else None)
            roi = None
        else:
            work, raw, models, roi = self._refine(prev, points, prior, models, roi)
        inter = np.count_nonzero(work & raw)
        union = np.count_nonzero(work | raw)
        score = 1.0 if union == 0 else inter / union
        state = work.astype(np.uint8) | (prior.astype(np.uint8) * np.uint8(PRIOR) if prior is not None else 0)
        state = state.astype(np.uint8).view(GrabCutState)
        state.models, state.roi = models, roi
        return Segmentation(self._to_original(work), state, float(score))

    def _first(self, points: list[tuple[int, int, bool]], box: Optional[Box],
               prior: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, Optional[tuple]]:
        """Segment from scratch (``prior``: a start mask, (h, w) bool, as probable object); returns
        (kept mask, raw GrabCut mask), both (h, w) bool, and GrabCut's colour models."""
        emb = self._emb
        assert emb is not None
        h, w = emb.image.shape[:2]
        labels = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        if box is not None:
            b = box.clamped(*self.image_size[::-1])
            x1, y1 = self._to_work(b.x1, b.y1)
            x2, y2 = self._to_work(b.x2, b.y2)
            labels[:] = cv2.GC_BGD
            labels[y1 : y2 + 1, x1 : x2 + 1] = cv2.GC_PR_FGD
        else:
            first = next((i for i, p in enumerate(points) if p[2]), -1)
            for i, (x, y, positive) in enumerate(points):
                if positive:
                    _disk(labels, x, y, self._seed_radius(x, y, first=i == first), cv2.GC_PR_FGD)
        if prior is not None:
            labels[prior & (labels != cv2.GC_BGD)] = cv2.GC_PR_FGD
        self._paint_clicks(labels, points)
        raw, models = self._grabcut((0, w, 0, h), labels, self.p.iterations, pixels=self.p.first_gc_pixels)
        if not self.p.local or box is not None:
            return raw, raw, models
        # keep what the positive clicks point at (and what overlaps the start mask)
        keep = np.zeros_like(raw)
        _, comp = cv2.connectedComponents(raw.astype(np.uint8), connectivity=8)
        for x, y, positive in points:
            if positive and raw[y, x]:
                keep |= comp == comp[y, x]
        if prior is not None:
            for label in np.unique(comp[raw & prior]):
                keep |= comp == label
        return keep, raw, models

    def _own_region(self, sub_prev: np.ndarray, points: list[tuple[int, int, bool]],
                    window: tuple[int, int, int, int], radius: int) -> np.ndarray:
        """GrabCut in ``window`` seeded by the newest (positive) click alone: its probable-object
        disk of ``radius`` is the whole object model, the previous mask and the rest of the window
        are probable background, negative clicks sure background. Returns the window's object
        mask ((y1-y0, x1-x0) bool)."""
        emb = self._emb
        assert emb is not None
        x0, x1, y0, y1 = window
        x, y, _ = points[-1]
        labels = np.full(sub_prev.shape, cv2.GC_PR_BGD, np.uint8)
        _disk(labels, x - x0, y - y0, radius, cv2.GC_PR_FGD)
        self._paint_clicks(labels, [p for p in points[:-1] if not p[2]] + [points[-1]], offset=(x0, y0))
        return self._grabcut(window, labels, self.p.refine_iterations, pixels=self.p.first_gc_pixels)[0]

    def _add_own_region(self, added: np.ndarray, prev: np.ndarray, sub_prev: np.ndarray,
                        points: list[tuple[int, int, bool]], window: tuple[int, int, int, int], radius: int,
                        near: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """What a positive click adds when the window proposal added little more than its dot.

        The click is then on a part of other colours than the mask (a shirt below a face): the
        colour model of the earlier clicks calls it background. GrabCut seeded by this click alone
        (``_own_region``) finds the part; its connected region outside ``prev`` that contains the
        click is added if it is at most ``own_max`` x the previous mask's area, else its piece
        within the click's reach (``near``) if that is; else nothing more than ``added`` (a part
        larger than everything marked so far is more likely a leak into background of the part's
        colours). ``raw`` (the whole working image's raw proposal) takes the window's own proposal
        when it is used. All window-sized masks are (y1-y0, x1-x0) bool.
        """
        x0, x1, y0, y1 = window
        x, y, _ = points[-1]
        own = self._own_region(sub_prev, points, window, radius)
        cap = self.p.own_max * np.count_nonzero(prev)
        new = own & ~sub_prev
        for part in (new, new & near):
            part = _component_at(part, x - x0, y - y0)
            size = np.count_nonzero(part)
            if size <= cap:
                if size > np.count_nonzero(added):
                    raw[y0:y1, x0:x1] = sub_prev | own
                    return part
                break
        return added

    def _refine(self, prev: np.ndarray, points: list[tuple[int, int, bool]],
                prior: Optional[np.ndarray] = None, models: Optional[tuple] = None,
                roi: Optional[tuple[int, int, int, int]] = None) -> tuple[np.ndarray, np.ndarray, Optional[tuple], Optional[tuple]]:
        """Change ``prev`` ((h, w) bool) only around the newest click (``prior``: the start mask, (h, w)
        bool, seeds GrabCut as probable object; ``models``: the previous call's colour models; ``roi``:
        the window the previous call grew to); returns (mask, raw GrabCut, the window GrabCut's colour
        models, the window if it was grown here or came grown, else None)."""
        emb = self._emb
        assert emb is not None
        h, w = emb.image.shape[:2]
        x, y, positive = points[-1]
        # the click's distance to the region it is asking to change is the scale of the change
        target = ~prev if positive else prev
        dist = cv2.distanceTransform(np.pad(target.astype(np.uint8), 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        d = float(dist[y + 1, x + 1])
        r0 = int(round(self.p.object_radius * min(h, w)))
        # the neighbourhood the click asks to flip is probably of the click's label
        radius = self._seed_radius(x, y, self.p.flip_factor * d) if positive else int(min(self.p.flip_factor * d, r0))
        first = next((i for i, p in enumerate(points) if p[2]), -1)
        # only pixels within reach of the click may change (below): the scale of the whole call
        reach = max(self.p.min_reach, (self.p.reach_factor if positive else self.p.neg_reach_factor) * d)

        def propose(window: tuple[int, int, int, int]) -> tuple[np.ndarray, Optional[tuple]]:
            x0, x1, y0, y1 = window
            # seed like a first call around the click: colour models from the clicks, not from a possibly
            # wrong previous mask (seeding from the mask lets its colour model swallow the new click); far
            # from the click the previous mask holds (hold_far)
            labels = np.full((y1 - y0, x1 - x0), cv2.GC_PR_BGD, np.uint8)
            if prior is not None:  # a given start mask: a better colour model of the object than clicks alone
                labels[prior[y0:y1, x0:x1]] = cv2.GC_PR_FGD
            for i, (px, py, ppos) in enumerate(points[:-1]):
                if ppos:
                    _disk(labels, px - x0, py - y0, self._seed_radius(px, py, first=i == first), cv2.GC_PR_FGD)
            _disk(labels, x - x0, y - y0, radius, cv2.GC_PR_FGD if positive else cv2.GC_PR_BGD)
            if self.p.hold_factor > 0:
                hold_far(labels, prev, window, x, y, self.p.hold_factor * reach + self.p.hold_margin)
            self._paint_clicks(labels, points, offset=(x0, y0))
            return self._grabcut(window, labels, self.p.refine_iterations, models)

        window = window_around(prev, points, self.p.margin, self.p.min_roi)
        if roi is not None and self.p.grow_roi:  # the previous click had to grow its window: start there
            window = (min(window[0], roi[0]), max(window[1], roi[1]), min(window[2], roi[2]), max(window[3], roi[3]))
        raw_sub, models = propose(window)
        if self.p.grow_roi:
            grown_window = grown(window, raw_sub, (h, w), self.p.margin, self.p.min_roi)
            if grown_window != window:  # the object runs out of the window: look again in a larger one
                window = roi = grown_window
                raw_sub, models = propose(window)
        x0, x1, y0, y1 = window
        sub_prev = prev[y0:y1, x0:x1]
        raw = prev.copy()
        raw[y0:y1, x0:x1] = raw_sub

        # only flip pixels connected to the click and within reach of it: a click fixes the error
        # it was put on, it does not license GrabCut to redraw the rest of the mask
        near = np.zeros(sub_prev.shape, np.uint8)
        _disk(near, x - x0, y - y0, int(reach), 1)
        near = near.astype(bool)
        out = prev.copy()
        cx, cy = x - x0, y - y0
        if positive:
            added = _component_at(raw_sub & ~sub_prev & near, cx, cy)
            if self.p.own_region and np.count_nonzero(added) < self.p.own_ratio * np.pi * radius**2:
                added = self._add_own_region(added, prev, sub_prev, points, (x0, x1, y0, y1), radius, near, raw)
            out[y0:y1, x0:x1] |= added
        else:
            removed = _component_at(sub_prev & ~raw_sub & near, cx, cy)
            if self.p.geometric_fallback and np.count_nonzero(removed) < 2 * np.pi * self.p.sure_radius**2:
                # GrabCut kept the region (same colours as the object: a look-alike neighbour):
                # cut by geometry instead: the part of the mask near the click that is clearly
                # closer to it than to any positive click (without one: than to the mask's own core)
                anchors = points if any(p[2] for p in points) else points + core(prev, x, y, self.p.fallback_ratio * d)
                removed = _component_at(sub_prev & near & closer_to(x, y, anchors, window, self.p.fallback_ratio), cx, cy)
            out[y0:y1, x0:x1] &= ~removed
        # the clicks are facts: their sure disks hold whatever GrabCut said
        disks = np.full((h, w), 255, np.uint8)
        self._paint_clicks(disks, points)
        out |= disks == cv2.GC_FGD
        out &= disks != cv2.GC_BGD
        return out, raw, models, roi
