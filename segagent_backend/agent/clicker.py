"""The standard interactive-segmentation click simulator (RITM / SimpleClick / NoC protocol).

Given the ground truth and the current prediction, place the next click where an annotator
would: in the middle of the largest error region, measured by the exact Euclidean distance to
the region's boundary (the image border counts as boundary). See segagent-protocol.md, section 6.

All masks are 2-D arrays of shape (H, W) (anything truthy = True); clicks are pixels with
x = column, y = row.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from .types import Click


def error_distance(region: np.ndarray) -> np.ndarray:
    """Exact L2 distance of every pixel of ``region`` to the nearest pixel outside it.

    region: (H, W) bool. Returns (H, W) float32; 0 outside ``region``. The region is padded with a
    1-pixel zero border before the transform, so pixels on the image border get distance 1 at most
    (the border counts as boundary).
    """
    padded = np.pad(region.astype(np.uint8), 1, mode="constant", constant_values=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dist[1:-1, 1:-1]


def next_click(
    gt: np.ndarray,
    pred: np.ndarray,
    ignore: Optional[np.ndarray] = None,
    clicked: Sequence[Click] = (),
) -> Optional[Click]:
    """The simulator's next click on the current error of ``pred`` against ``gt``.

    gt, pred: (H, W) masks (bool or 0/1); ignore: optional (H, W) mask of pixels excluded from
    both error regions (e.g. the 128 band of a GrabCut trimap); clicked: all clicks made so far,
    whose pixels (rounded to the nearest integer column/row) may not be chosen again.

    Returns a ``Click`` at integer pixel coordinates (x = column, y = row), positive when the
    false-negative region's largest distance strictly exceeds the false-positive one's, else
    negative; ties between pixels go to the first in row-major order. None when no error pixel
    (with a distance > 0) is left.
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"gt and pred must be equal 2-D shapes, got {gt.shape} and {pred.shape}")
    fn = gt & ~pred
    fp = ~gt & pred
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        fn &= keep
        fp &= keep

    fn_dist = error_distance(fn)
    fp_dist = error_distance(fp)
    h, w = gt.shape
    for c in clicked:
        col, row = int(round(c.x)), int(round(c.y))
        if 0 <= row < h and 0 <= col < w:
            fn_dist[row, col] = 0.0
            fp_dist[row, col] = 0.0

    fn_max = float(fn_dist.max()) if fn_dist.size else 0.0
    fp_max = float(fp_dist.max()) if fp_dist.size else 0.0
    positive = fn_max > fp_max
    best = fn_max if positive else fp_max
    if best <= 0.0:
        return None
    # argmax of the flattened (C-order) array returns the first maximum in row-major order
    row, col = divmod(int(np.argmax(fn_dist if positive else fp_dist)), w)
    return Click(float(col), float(row), positive)
