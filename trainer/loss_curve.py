"""The loss curve of a fine-tuning run as a PNG (``plot.draw_lines``)."""
from __future__ import annotations

import math
from typing import Sequence

from .plot import draw_lines


def draw_loss_curve(points: Sequence[tuple[int, float]], title: str = "training loss",
                    size: tuple[int, int] = (800, 480)) -> bytes:
    """A PNG (bytes) of loss against step: axes, ticks, labels, title and the last value."""
    losses = [v for _, v in points if math.isfinite(v)] or [0.0, 1.0]
    low, high = min(losses), max(losses)
    pad = 0.05 * (high - low) or 0.5
    # from 0 unless the curve would be a flat line at the top (a small drop over a high floor)
    ylim = (min(0.0, low) if low < 0.5 * high else low - pad), high + pad
    note = f"last {points[-1][1]:.4g} at step {points[-1][0]}" if points else ""
    return draw_lines({"loss": list(points)}, title, "step", "loss", ylim, size, note)
