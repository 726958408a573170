"""The graph cut of the GrabCut tool and its pixel helpers: GrabCut on a region at a bounded resolution,
stopped once converged, and the edge-aware (guided-filter) upsampling that brings its mask back.

Kept apart from :mod:`.grabcut` (how clicks become seeds and how a click may change the mask) because
these know nothing of clicks: a label image in, a mask out."""
from __future__ import annotations

from typing import Callable, Optional

import cv2
import numpy as np

#: the colour models (background, foreground GMMs: two (1, 65) float64 arrays) a GrabCut ends with
Models = tuple[np.ndarray, np.ndarray]


def disk(mask: np.ndarray, x: int, y: int, radius: int, value: int) -> None:
    """Paint a filled disk (centre x = column, y = row) into ``mask`` in place."""
    cv2.circle(mask, (int(x), int(y)), max(int(radius), 0), int(value), thickness=-1)


def component_at(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 8-connected component of ``mask`` ((h, w) bool) containing pixel (x, y); empty if off."""
    if not mask[y, x]:
        return np.zeros_like(mask)
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return labels == labels[y, x]


def grey(bgr_or_rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (h, w) float32 grey in [0, 1] (the guide of the edge-aware upsampling; the
    channel order does not matter much for a guide, RGB2GRAY weights are used either way)."""
    return cv2.cvtColor(bgr_or_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) * np.float32(1 / 255)


def upsample_edge_aware(mask: np.ndarray, size: tuple[int, int], guide: Callable[[int, int, int, int], np.ndarray],
                        eps: float = 1e-3, radius: float = 1.0) -> np.ndarray:
    """(h, w) bool ``mask`` -> (H, W) = ``size`` bool with its boundary moved onto the image's edges: the
    bilinear upsampling of the mask, guided-filtered (He et al.) by the image's grey and thresholded at 0.5,
    only in a band around the bilinear boundary (``radius`` x the upsampling factor wide, at least 2
    pixels); elsewhere the bilinear mask as is. ``guide(y0, y1, x0, x1)``: the (y1-y0, x1-x0) float32 grey
    in [0, 1] of that crop of the full-size image; only the band's bounding box (+ the filter's reach) is
    asked for and filtered, so the cost follows the boundary's extent, not the image's."""
    h, w = mask.shape
    H, W = size
    if (h, w) == (H, W):
        return mask.copy()
    soft = cv2.resize(mask.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    out = soft >= 0.5
    edge = (soft > 0.0) & (soft < 1.0)
    ys, xs = np.nonzero(edge)
    if len(ys) == 0:
        return out
    r = int(max(2, round(radius * max(H / h, W / w))))
    y0, y1 = max(0, ys.min() - 2 * r), min(H, ys.max() + 2 * r + 1)
    x0, x1 = max(0, xs.min() - 2 * r), min(W, xs.max() + 2 * r + 1)
    I, P = guide(y0, y1, x0, x1), soft[y0:y1, x0:x1]
    k = (2 * r + 1, 2 * r + 1)

    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(I), box(P)
    a = (box(I * P) - mean_i * mean_p) / (box(I * I) - mean_i * mean_i + np.float32(eps))
    b = mean_p - a * mean_i
    q = box(a) * I + box(b)
    band = cv2.dilate(edge[y0:y1, x0:x1].astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, k)) > 0
    sub = out[y0:y1, x0:x1]
    sub[band] = q[band] >= 0.5
    return out


def _object(labels: np.ndarray) -> np.ndarray:
    return (labels & 1).astype(bool)  # GC_FGD (1) and GC_PR_FGD (3) are the odd labels


def _has_both(labels: np.ndarray) -> bool:
    odd = labels & 1
    return bool(odd.any() and not odd.all())


def grabcut_iterations(image: np.ndarray, labels: np.ndarray, iterations: int, tol: float,
                       models: Optional[Models] = None) -> Models:
    """``cv2.grabCut`` on ``image`` from ``labels`` (changed in place), at most ``iterations`` iterations:
    one at a time (each the same as the next of one call: the models carry over) when ``tol`` > 0, stopped
    after an iteration that flipped at most ``tol`` x the pixels (converged: more iterations would change
    next to nothing). ``models``: start from them (``GC_EVAL``) instead of a k-means initialisation.
    Returns the colour models it ended with."""
    if models is not None:
        bgd, fgd, mode = models[0].copy(), models[1].copy(), cv2.GC_EVAL
    else:
        bgd, fgd, mode = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64), cv2.GC_INIT_WITH_MASK
    iterations = max(1, iterations)
    if tol <= 0:
        cv2.grabCut(image, labels, None, bgd, fgd, iterations, mode)
        return bgd, fgd
    cv2.grabCut(image, labels, None, bgd, fgd, 1, mode)
    most = tol * labels.size
    for _ in range(iterations - 1):
        before = labels & 1
        cv2.grabCut(image, labels, None, bgd, fgd, 1, cv2.GC_EVAL)
        if np.count_nonzero(before != (labels & 1)) <= most:
            break
    return bgd, fgd


def bounded_grabcut(image: np.ndarray, guide: np.ndarray, labels: np.ndarray, iterations: int, pixels: int,
                    tol: float = 0.0, models: Optional[Models] = None, seed: int = 0, eps: float = 1e-3,
                    radius: float = 1.0) -> tuple[np.ndarray, Optional[Models]]:
    """GrabCut of ``image`` ((h, w, 3) uint8) from ``labels`` ((h, w) uint8 GC_* values) at most at
    ``pixels`` pixels (0 = no bound); returns the (h, w) bool object mask and the colour models it ended
    with (None when it did not run: ``labels`` without samples of both sides give their object as is).

    A larger region is downscaled (the image by area, the labels by nearest, a sure label kept wherever it
    covers part of a cell), and the mask comes back by :func:`upsample_edge_aware` guided by ``guide``
    ((h, w) float32 grey, ``eps`` and ``radius`` its filter; ``eps`` <= 0: bilinear) with the sure labels
    kept at full size. ``tol``, ``models``: :func:`grabcut_iterations`. ``seed``: OpenCV's RNG seed, set
    first (the k-means of the GMM initialisation draws from it: runs stay repeatable)."""
    if not _has_both(labels):  # GrabCut needs samples of both models
        return _object(labels), None
    hh, ww = labels.shape
    s = 1.0 if pixels <= 0 else min(1.0, float(np.sqrt(pixels / (hh * ww))))
    small, cut = image, labels.copy()
    if s < 1.0:
        size = (max(1, round(ww * s)), max(1, round(hh * s)))
        coarse = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        for value in (cv2.GC_BGD, cv2.GC_FGD):  # a click's sure disk survives the downscaling
            coarse[cv2.resize((labels == value).astype(np.uint8) * np.uint8(255), size,
                              interpolation=cv2.INTER_AREA) > 0] = value
        if _has_both(coarse):
            small, cut = cv2.resize(image, size, interpolation=cv2.INTER_AREA), coarse
        else:
            s = 1.0
    cv2.setRNGSeed(seed)
    models = grabcut_iterations(np.ascontiguousarray(small), cut, iterations, tol, models)
    mask = _object(cut)
    if s < 1.0:
        if eps > 0:
            mask = upsample_edge_aware(mask, (hh, ww), lambda a, b, c, d: guide[a:b, c:d], eps, radius)
        else:
            mask = cv2.resize(mask.astype(np.float32), (ww, hh), interpolation=cv2.INTER_LINEAR) >= 0.5
        # what the annotator said is kept at the working size, whatever the coarser cut made of it
        mask[labels == cv2.GC_FGD] = True
        mask[labels == cv2.GC_BGD] = False
    return mask, models
