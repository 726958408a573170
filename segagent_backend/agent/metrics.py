"""Segmentation metrics of the protocol (segagent-protocol.md, section 8).

Masks are (H, W) arrays (anything truthy = True); ``ignore`` marks pixels excluded from both
intersection and union.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def intersection_union(pred: np.ndarray, gt: np.ndarray, ignore: Optional[np.ndarray] = None) -> tuple[int, int]:
    """(|pred & gt|, |pred | gt|) in pixels, over the pixels not in ``ignore``. All (H, W)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs gt {gt.shape}")
    inter = pred & gt
    union = pred | gt
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        inter &= keep
        union &= keep
    return int(np.count_nonzero(inter)), int(np.count_nonzero(union))


def iou(pred: np.ndarray, gt: np.ndarray, ignore: Optional[np.ndarray] = None) -> float:
    """Intersection over union of two (H, W) masks; an empty union counts as 1.0."""
    inter, union = intersection_union(pred, gt, ignore)
    return 1.0 if union == 0 else inter / union


def noc(ious_per_click: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """Number of clicks needed to reach IoU >= ``threshold``.

    ious_per_click[i] is the IoU after click i + 1. A sample that never reaches the threshold
    within ``max_clicks`` clicks counts as ``max_clicks``.
    """
    values = np.asarray(ious_per_click, dtype=np.float64)[:max_clicks]
    hits = np.flatnonzero(values >= threshold)
    return int(hits[0]) + 1 if hits.size else int(max_clicks)


def mean_noc(per_sample_ious: Sequence[Sequence[float]], threshold: float, max_clicks: int = 20) -> float:
    """NoC@threshold averaged over samples (each a per-click IoU list)."""
    if len(per_sample_ious) == 0:
        return float("nan")
    return float(np.mean([noc(s, threshold, max_clicks) for s in per_sample_ious]))


def ciou(intersections: Sequence[float], unions: Sequence[float]) -> float:
    """Cumulative IoU: sum of intersections / sum of unions over all samples (1.0 if all unions are empty)."""
    total_union = float(np.sum(np.asarray(unions, dtype=np.float64)))
    total_inter = float(np.sum(np.asarray(intersections, dtype=np.float64)))
    return 1.0 if total_union == 0 else total_inter / total_union


def giou(ious: Sequence[float]) -> float:
    """Generalised (mean per-sample) IoU; each sample's empty union should already count as 1."""
    values = np.asarray(ious, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")
