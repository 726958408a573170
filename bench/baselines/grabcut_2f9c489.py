"""FROZEN BASELINE for bench/grabcut_speed.py: the GrabCut tool as of commit 2f9c489 (grabcut.py with
grabcut_params.py inlined), kept verbatim so the bench can run today's tool beside the current one in one run.
Do not edit.

The original docstring follows.

GrabCut as an interactive tool: the zero-download default segmenter (OpenCV only, no weights).

How clicks become a mask (all at a capped working resolution, ``max_side``):

* First call (no previous mask): every click is a small *sure* disk (positive = object,
  negative = background), the first positive click also gets a large *probable-object* disk
  (a fifth of the shorter side: on the GrabCut set a smaller disk often seeds only part of a
  multi-coloured object and GrabCut then drops the rest; mean IoU after 1 click 0.70 -> 0.76), a
  box (if any) makes its outside sure background; GrabCut runs on the whole image and only the
  connected components that contain a positive click are kept (stray look-alike specks elsewhere
  are not what the annotator pointed at).
* Later calls propose with GrabCut seeded by the clicks again (colour models from the clicks, not
  from a possibly wrong previous mask), in a window around the previous mask and the clicks, then
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

The mask handed back is upsampled to the original size; ``logits`` carries the working-resolution
mask as the state for the next call ((h, w) uint8: bit 0 the mask, bit 1 the start mask, if any).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from segagent_backend.agent.types import Box, Click, Segmentation
from segagent_backend.agent.segmenters.base import Segmenter
from segagent_backend.agent.segmenters.cache import EmbeddingCache
@dataclass(frozen=True)
class GrabCutParams:
    """How :class:`~.grabcut.GrabCutSegmenter` turns clicks into masks (defaults measured on the GrabCut set).

    Fields:
        max_side: longest side of the working image in pixels (larger images are downscaled for
            speed, the mask is upsampled back).
        iterations: GrabCut iterations for the first segmentation.
        refine_iterations: GrabCut iterations for the proposals of later clicks (a window only).
        sure_radius: radius of the sure-label disk at each click, in working pixels.
        object_radius: largest probable-object disk around a later positive click, as a fraction
            of the working image's shorter side.
        first_radius: the probable-object disk of the first positive click, same unit (with
            ``adaptive_seed=False`` every disk is ``object_radius``).
        flip_factor: later disks: at most ``flip_factor`` x the distance to the nearest image
            edge (and to the previous mask), at least ``min_seed`` x the largest size.
        margin, min_roi: later proposals run in the box around mask and clicks widened by
            ``margin`` x its size + ``min_roi`` / 2 pixels.
        reach_factor, neg_reach_factor, min_reach: a positive (negative) click changes pixels
            within ``max(min_reach, reach_factor (neg_reach_factor) x distance to the previous
            mask's boundary)`` of it only.
        local: False = plain GrabCut from the clicks every call (no locality rule at all).
        geometric_fallback, fallback_ratio: the look-alike removal rule above (pixels
            ``fallback_ratio`` times closer to the negative click than to every positive one).
        canny, blur: Canny thresholds and Gaussian blur size of the cached edge map.
        own_region, own_ratio, own_max: the rule for a positive click on a part of other colours
            (above): on when the proposal added less than ``own_ratio`` x the area of the click's
            probable-object disk; the part added is at most ``own_max`` x the previous mask's area.
        seed: OpenCV RNG seed set before every GrabCut call (its GMM init uses k-means).
    """

    max_side: int = 512
    iterations: int = 4
    refine_iterations: int = 4
    sure_radius: int = 4
    object_radius: float = 0.12
    first_radius: float = 0.2
    min_roi: int = 48
    flip_factor: float = 0.8
    margin: float = 0.3
    reach_factor: float = 3.0
    neg_reach_factor: float = 4.0
    min_reach: int = 8
    local: bool = True
    seed: int = 0
    canny: tuple[int, int] = (40, 100)
    adaptive_seed: bool = True
    min_seed: float = 0.5
    geometric_fallback: bool = True
    fallback_ratio: float = 1.5
    blur: int = 5
    own_region: bool = True
    own_ratio: float = 0.5
    own_max: float = 1.0

    def __post_init__(self):
        if self.max_side < 16:
            raise ValueError("max_side must be >= 16")
        object.__setattr__(self, "blur", int(self.blur) | 1)  # an odd Gaussian kernel


@dataclass(frozen=True)
class _Embedding:
    """The cached per-image data: the image at working size (h, w, 3) uint8 BGR and its scale."""

    image: np.ndarray
    scale: float  # working pixels per original pixel (<= 1)
    edge_dist: np.ndarray  # (h, w) float32: distance to the nearest image edge, in working pixels


#: bits of the ``logits`` state: the mask, and the start mask it was refined from (``mask_prior``)
MASK, PRIOR = 1, 2


def _disk(mask: np.ndarray, x: int, y: int, radius: int, value: int) -> None:
    """Paint a filled disk (centre x = column, y = row) into ``mask`` in place."""
    cv2.circle(mask, (int(x), int(y)), max(int(radius), 0), int(value), thickness=-1)


def _component_at(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 8-connected component of ``mask`` ((h, w) bool) containing pixel (x, y); empty if off."""
    if not mask[y, x]:
        return np.zeros_like(mask)
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return labels == labels[y, x]


class GrabCutSegmenter(Segmenter):
    """OpenCV GrabCut seeded by clicks and/or a box, refined locally click by click.

    Tunables: :class:`~.grabcut_params.GrabCutParams` (keyword arguments of the constructor).
    """

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
        return _Embedding(bgr, scale, edge_dist), int(bgr.nbytes + edge_dist.nbytes)

    def _use(self, embedding: object, image: np.ndarray) -> None:
        assert isinstance(embedding, _Embedding)
        self._emb = embedding

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
        """(h, w) bool working mask -> (H, W) bool mask (bilinear upsampling, threshold 0.5)."""
        H, W = self.image_size
        if work_mask.shape == (H, W):
            return work_mask.copy()
        up = cv2.resize(work_mask.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
        return up >= 0.5

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

    def _grabcut(self, image: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
        """Run GrabCut from ``labels`` ((h, w) uint8 GC_* values); return the object mask (bool)."""
        has_fg = np.any((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))
        has_bg = np.any((labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD))
        if not (has_fg and has_bg):  # GrabCut needs samples of both models
            return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
        cv2.setRNGSeed(self.p.seed)  # k-means in the GMM init draws from OpenCV's RNG: keep runs repeatable
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        labels = labels.copy()
        cv2.grabCut(image, labels, None, bgd, fgd, max(1, iterations), cv2.GC_INIT_WITH_MASK)
        return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)

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

        prev = prior = None
        if prev_logits is not None and np.shape(prev_logits) == (h, w):
            state = np.asarray(prev_logits).astype(np.uint8)
            prev = (state & MASK) > 0
            prior = (state & PRIOR) > 0
            prior = prior if prior.any() else None
        if prev is None or not prev.any() or not self.p.local or not points:
            # a start mask seeds a from-scratch GrabCut only while something of the mask is left
            work, raw = self._first(points, box, prior if prev is not None and prev.any() else None)
        else:
            work, raw = self._refine(prev, points, prior)
        inter = np.count_nonzero(work & raw)
        union = np.count_nonzero(work | raw)
        score = 1.0 if union == 0 else inter / union
        state = work.astype(np.uint8) | (prior.astype(np.uint8) * np.uint8(PRIOR) if prior is not None else 0)
        return Segmentation(self._to_original(work), state.astype(np.uint8), float(score))

    def _first(self, points: list[tuple[int, int, bool]], box: Optional[Box],
               prior: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Segment from scratch (``prior``: a start mask, (h, w) bool, as probable object); returns
        (kept mask, raw GrabCut mask), both (h, w) bool."""
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
        raw = self._grabcut(emb.image, labels, self.p.iterations)
        if not self.p.local or box is not None:
            return raw, raw
        # keep what the positive clicks point at (and what overlaps the start mask)
        keep = np.zeros_like(raw)
        _, comp = cv2.connectedComponents(raw.astype(np.uint8), connectivity=8)
        for x, y, positive in points:
            if positive and raw[y, x]:
                keep |= comp == comp[y, x]
        if prior is not None:
            for label in np.unique(comp[raw & prior]):
                keep |= comp == label
        return keep, raw

    def _closer_to(self, x: int, y: int, points, window: tuple[int, int, int, int]) -> np.ndarray:
        """Window pixels ((y1-y0, x1-x0) bool) at least ``fallback_ratio`` times closer to (x, y)
        than to every positive click (working coordinates)."""
        x0, x1, y0, y1 = window
        yy, xx = np.mgrid[y0:y1, x0:x1]
        own = np.hypot(xx - x, yy - y) * self.p.fallback_ratio
        keep = np.ones(own.shape, bool)
        for px, py, positive in points:
            if positive:
                keep &= own < np.hypot(xx - px, yy - py)
        return keep

    def _window(self, prev: np.ndarray, points: list[tuple[int, int, bool]]) -> tuple[int, int, int, int]:
        """(x0, x1, y0, y1) of the working-image window GrabCut refines in."""
        h, w = prev.shape
        # the box around the mask and all clicks, with a margin of background for the colour model
        ys, xs = np.nonzero(prev)
        xs = np.concatenate([xs, [p[0] for p in points]])
        ys = np.concatenate([ys, [p[1] for p in points]])
        mx = int(self.p.margin * (xs.max() - xs.min()) + self.p.min_roi // 2)
        my = int(self.p.margin * (ys.max() - ys.min()) + self.p.min_roi // 2)
        return max(0, xs.min() - mx), min(w, xs.max() + mx + 1), max(0, ys.min() - my), min(h, ys.max() + my + 1)

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
        return self._grabcut(np.ascontiguousarray(emb.image[y0:y1, x0:x1]), labels, self.p.refine_iterations)

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
                prior: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """Change ``prev`` ((h, w) bool) only around the newest click (``prior``: the start mask, (h, w)
        bool, seeds GrabCut as probable object); returns (mask, raw GrabCut)."""
        emb = self._emb
        assert emb is not None
        h, w = emb.image.shape[:2]
        x, y, positive = points[-1]
        # the click's distance to the region it is asking to change is the scale of the change
        target = ~prev if positive else prev
        dist = cv2.distanceTransform(np.pad(target.astype(np.uint8), 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        d = float(dist[y + 1, x + 1])
        x0, x1, y0, y1 = self._window(prev, points)
        sub_prev = prev[y0:y1, x0:x1]
        r0 = int(round(self.p.object_radius * min(h, w)))
        # seed like a first call: colour models from the clicks, not from a possibly wrong previous
        # mask (seeding from the mask lets its colour model swallow the new click)
        labels = np.full(sub_prev.shape, cv2.GC_PR_BGD, np.uint8)
        if prior is not None:  # a given start mask: a better colour model of the object than clicks alone
            labels[prior[y0:y1, x0:x1]] = cv2.GC_PR_FGD
        first = next((i for i, p in enumerate(points) if p[2]), -1)
        for i, (px, py, ppos) in enumerate(points[:-1]):
            if ppos:
                _disk(labels, px - x0, py - y0, self._seed_radius(px, py, first=i == first), cv2.GC_PR_FGD)
        # the neighbourhood the click asks to flip is probably of the click's label
        radius = self._seed_radius(x, y, self.p.flip_factor * d) if positive else int(min(self.p.flip_factor * d, r0))
        _disk(labels, x - x0, y - y0, radius, cv2.GC_PR_FGD if positive else cv2.GC_PR_BGD)
        self._paint_clicks(labels, points, offset=(x0, y0))
        raw_sub = self._grabcut(np.ascontiguousarray(emb.image[y0:y1, x0:x1]), labels, self.p.refine_iterations)
        raw = prev.copy()
        raw[y0:y1, x0:x1] = raw_sub

        # only flip pixels connected to the click and within reach of it: a click fixes the error
        # it was put on, it does not license GrabCut to redraw the rest of the mask
        near = np.zeros(sub_prev.shape, np.uint8)
        reach = (self.p.reach_factor if positive else self.p.neg_reach_factor) * d
        _disk(near, x - x0, y - y0, int(max(self.p.min_reach, reach)), 1)
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
                # closer to it than to any positive click
                removed = _component_at(sub_prev & near & self._closer_to(x, y, points, (x0, x1, y0, y1)), cx, cy)
            out[y0:y1, x0:x1] &= ~removed
        # the clicks are facts: their sure disks hold whatever GrabCut said
        disks = np.full((h, w), 255, np.uint8)
        self._paint_clicks(disks, points)
        out |= disks == cv2.GC_FGD
        out &= disks != cv2.GC_BGD
        return out, raw
