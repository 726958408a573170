"""How well the policy's own IoU estimates (its PRM) agree with the true IoU: MAE, Pearson, Spearman."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given the mean of the ranks they span (float64, same length)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of ranks s+1..e
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def prm_quality(pairs: Sequence[tuple[float, float]]) -> dict:
    """MAE, Pearson and Spearman of estimated vs true IoU, both x 100 (pairs of 0..1 values).

    Spearman = Pearson of the ranks (ties averaged): scipy's ``spearmanr`` when scipy is installed,
    else the same in numpy. NaN when fewer than 2 pairs or a side is constant."""
    est = np.asarray([p[0] for p in pairs], dtype=np.float64) * 100.0
    true = np.asarray([p[1] for p in pairs], dtype=np.float64) * 100.0
    if len(est) == 0:
        return {"pairs": 0, "mae": float("nan"), "pearson": float("nan"), "spearman": float("nan")}
    spearman = _pearson(rank_average(est), rank_average(true))
    try:
        from scipy.stats import spearmanr
    except ImportError:
        spearman_by = "numpy"
    else:
        spearman_by = "scipy"
        if not np.isnan(spearman):
            spearman = float(spearmanr(est, true)[0])
    return {"pairs": int(len(est)), "mae": float(np.mean(np.abs(est - true))), "pearson": _pearson(est, true),
            "spearman": spearman, "spearman_by": spearman_by}
