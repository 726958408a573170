"""The loss curve of a fine-tuning run as a PNG (OpenCV only, no plotting library)."""
from __future__ import annotations

import math
from typing import Sequence


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    span = max(high - low, 1e-12)
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def draw_loss_curve(points: Sequence[tuple[int, float]], title: str = "training loss",
                    size: tuple[int, int] = (800, 480)) -> bytes:
    """A PNG (bytes) of loss against step drawn with OpenCV: axes, ticks, labels, title."""
    import cv2
    import numpy as np

    width, height = size
    left, right, top, bottom = 80, 30, 50, 60
    img = np.full((height, width, 3), 255, np.uint8)
    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (225, 225, 225)
    (tw, _), _ = cv2.getTextSize(title, font, 0.6, 1)
    cv2.putText(img, title, ((width - tw) // 2, 30), font, 0.6, black, 1, cv2.LINE_AA)
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    steps = [s for s, _ in points] or [0, 1]
    losses = [v for _, v in points if math.isfinite(v)] or [0.0, 1.0]
    smin, smax = min(steps), max(max(steps), min(steps) + 1)
    low, high = min(losses), max(losses)
    pad = 0.05 * (high - low) or 0.5
    # from 0 unless the curve would be a flat line at the top (a small drop over a high floor)
    lmin, lmax = (min(0.0, low) if low < 0.5 * high else low - pad), high + pad

    def px(step: float, loss: float) -> tuple[int, int]:
        return (int(round(x0 + (step - smin) / (smax - smin) * (x1 - x0))),
                int(round(y0 - (loss - lmin) / (lmax - lmin) * (y0 - y1))))

    for t in _nice_ticks(lmin, lmax):
        y = px(smin, t)[1]
        cv2.line(img, (x0, y), (x1, y), grey, 1)
        label = f"{t:g}"
        (lw, lh), _ = cv2.getTextSize(label, font, 0.45, 1)
        cv2.putText(img, label, (x0 - lw - 8, y + lh // 2), font, 0.45, black, 1, cv2.LINE_AA)
    for t in _nice_ticks(smin, smax):
        x = px(t, lmin)[0]
        cv2.line(img, (x, y0), (x, y0 + 5), black, 1)
        label = f"{t:g}"
        (lw, lh), _ = cv2.getTextSize(label, font, 0.45, 1)
        cv2.putText(img, label, (x - lw // 2, y0 + lh + 10), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.line(img, (x0, y0), (x1, y0), black, 1)
    cv2.line(img, (x0, y0), (x0, y1), black, 1)
    (lw, _), _ = cv2.getTextSize("step", font, 0.5, 1)
    cv2.putText(img, "step", ((x0 + x1 - lw) // 2, height - 12), font, 0.5, black, 1, cv2.LINE_AA)
    label = np.full((24, 60, 3), 255, np.uint8)  # the y label, written horizontally then turned
    cv2.putText(label, "loss", (8, 17), font, 0.5, black, 1, cv2.LINE_AA)
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    cy = (y0 + y1) // 2 - label.shape[0] // 2
    img[cy: cy + label.shape[0], 8: 8 + label.shape[1]] = label
    curve = np.array([px(s, v) for s, v in points if math.isfinite(v)], np.int32)
    if len(curve) > 1:
        cv2.polylines(img, [curve.reshape(-1, 1, 2)], False, (180, 90, 20), 2, cv2.LINE_AA)
    for x, y in curve if len(curve) <= 60 else ():
        cv2.circle(img, (int(x), int(y)), 3, (180, 90, 20), -1, cv2.LINE_AA)
    if points:
        last = f"last {points[-1][1]:.4g} at step {points[-1][0]}"
        (lw, _), _ = cv2.getTextSize(last, font, 0.45, 1)
        cv2.putText(img, last, (x1 - lw, y1 - 8), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("OpenCV could not encode the loss curve")
    return png.tobytes()
