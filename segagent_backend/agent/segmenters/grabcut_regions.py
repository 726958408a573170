"""Where a later click's GrabCut looks and what it may change, as geometry on working-resolution masks: the
window around mask and clicks and its growth, the held region far from the click, and the geometric cut of a
look-alike a negative click is on.

Kept apart from :mod:`.grabcut` (the click rules that call these) because none of it runs a graph cut. A window
is ``(x0, x1, y0, y1)`` in working pixels (columns x0..x1-1, rows y0..y1-1); a point is ``(x, y, positive)``."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .grabcut_cut import disk

Window = tuple[int, int, int, int]
Point = tuple[int, int, bool]


def window_around(prev: np.ndarray, points: Sequence[Point], margin: float, min_roi: int) -> Window:
    """The box around the mask ``prev`` ((h, w) bool) and all clicks, widened on each side by ``margin`` x its
    size + ``min_roi`` / 2 pixels (background for the colour model), clipped to the image."""
    h, w = prev.shape
    ys, xs = np.nonzero(prev)
    xs = np.concatenate([xs, [p[0] for p in points]])
    ys = np.concatenate([ys, [p[1] for p in points]])
    mx = int(margin * (xs.max() - xs.min()) + min_roi // 2)
    my = int(margin * (ys.max() - ys.min()) + min_roi // 2)
    return max(0, xs.min() - mx), min(w, xs.max() + mx + 1), max(0, ys.min() - my), min(h, ys.max() + my + 1)


def grown(window: Window, raw_sub: np.ndarray, shape: tuple[int, int], margin: float, min_roi: int) -> Window:
    """``window`` with every side the proposal ``raw_sub`` ((y1-y0, x1-x0) bool) touches (and the image of
    ``shape`` = (h, w) does not end at) moved out by ``margin`` x the window's size (at least ``min_roi``);
    the same window when none is touched."""
    x0, x1, y0, y1 = window
    h, w = shape
    gx = int(max(min_roi, margin * (x1 - x0)))
    gy = int(max(min_roi, margin * (y1 - y0)))
    if x0 > 0 and raw_sub[:, 0].any():
        x0 = max(0, x0 - gx)
    if x1 < w and raw_sub[:, -1].any():
        x1 = min(w, x1 + gx)
    if y0 > 0 and raw_sub[0, :].any():
        y0 = max(0, y0 - gy)
    if y1 < h and raw_sub[-1, :].any():
        y1 = min(h, y1 + gy)
    return x0, x1, y0, y1


def hold_far(labels: np.ndarray, prev: np.ndarray, window: Window, x: int, y: int, radius: float) -> None:
    """Give the window's pixels farther than ``radius`` from the click (x, y) the previous mask ((h, w) bool)
    as sure labels (``GC_FGD`` / ``GC_BGD``) in ``labels`` ((y1-y0, x1-x0) uint8), in place: the click cannot
    change them, so the graph cut need not decide them (a sure pixel costs it a fraction of a free one), and
    the colour models learn from the mask the episode has made so far instead of a first guess from the seeds."""
    x0, x1, y0, y1 = window
    yy, xx = np.ogrid[y0:y1, x0:x1]
    far = (xx - x) ** 2 + (yy - y) ** 2 > radius**2
    labels[far] = np.where(prev[y0:y1, x0:x1][far], cv2.GC_FGD, cv2.GC_BGD)


def closer_to(x: int, y: int, points: Sequence[Point], window: Window, ratio: float) -> np.ndarray:
    """The window's pixels ((y1-y0, x1-x0) bool) at least ``ratio`` times closer to (x, y) than to every
    positive click."""
    x0, x1, y0, y1 = window
    yy, xx = np.mgrid[y0:y1, x0:x1]
    own = np.hypot(xx - x, yy - y) * ratio
    keep = np.ones(own.shape, bool)
    for px, py, positive in points:
        if positive:
            keep &= own < np.hypot(xx - px, yy - py)
    return keep


def core(prev: np.ndarray, x: int, y: int, radius: float) -> list[Point]:
    """Where the mask is evidence of the object when no positive click says where it is (a start mask or a box
    refined by negative clicks alone): the innermost pixel of ``prev`` ((h, w) bool) outside the disk of
    ``radius`` around the click (x, y), as a positive pseudo-click; none when the mask has nothing outside it."""
    rest = prev.astype(np.uint8)
    disk(rest, x, y, int(np.ceil(radius)), 0)
    if not rest.any():
        return []
    inner = cv2.distanceTransform(np.pad(rest, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    cy, cx = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return [(int(cx), int(cy), True)]
