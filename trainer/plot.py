"""Line plots as PNG bytes, drawn with OpenCV (no plotting library is installed)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

COLOURS = ((180, 90, 20), (30, 140, 230), (60, 160, 60), (40, 40, 200))  # BGR


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    span = max(high - low, 1e-12)
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def draw_lines(series: dict[str, Sequence[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
               ylim: tuple[float, float] = (0.0, 1.0), size: tuple[int, int] = (800, 480), note: str = "") -> bytes:
    """A PNG (bytes) of one or more named curves (x, y) with axes, ticks, labels, a legend, a title and
    an optional ``note`` above the top right corner."""
    import cv2

    width, height = size
    left, right, top, bottom = 80, 30, 50, 60
    img = np.full((height, width, 3), 255, np.uint8)
    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (225, 225, 225)
    (tw, _), _ = cv2.getTextSize(title, font, 0.6, 1)
    cv2.putText(img, title, ((width - tw) // 2, 30), font, 0.6, black, 1, cv2.LINE_AA)
    x0, x1, y0, y1 = left, width - right, height - bottom, top
    xs = [x for points in series.values() for x, _ in points] or [0.0, 1.0]
    xmin, xmax = min(xs), max(max(xs), min(xs) + 1)
    ymin, ymax = ylim

    def px(x: float, y: float) -> tuple[int, int]:
        return (int(round(x0 + (x - xmin) / (xmax - xmin) * (x1 - x0))),
                int(round(y0 - (y - ymin) / (ymax - ymin) * (y0 - y1))))

    for t in nice_ticks(ymin, ymax):
        y = px(xmin, t)[1]
        cv2.line(img, (x0, y), (x1, y), grey, 1)
        (lw, lh), _ = cv2.getTextSize(f"{t:g}", font, 0.45, 1)
        cv2.putText(img, f"{t:g}", (x0 - lw - 8, y + lh // 2), font, 0.45, black, 1, cv2.LINE_AA)
    for t in nice_ticks(xmin, xmax, min(10, int(xmax - xmin) or 1)):
        x = px(t, ymin)[0]
        cv2.line(img, (x, y0), (x, y0 + 5), black, 1)
        (lw, lh), _ = cv2.getTextSize(f"{t:g}", font, 0.45, 1)
        cv2.putText(img, f"{t:g}", (x - lw // 2, y0 + lh + 10), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.line(img, (x0, y0), (x1, y0), black, 1)
    cv2.line(img, (x0, y0), (x0, y1), black, 1)
    (lw, _), _ = cv2.getTextSize(xlabel, font, 0.5, 1)
    cv2.putText(img, xlabel, ((x0 + x1 - lw) // 2, height - 12), font, 0.5, black, 1, cv2.LINE_AA)
    (lw, _), _ = cv2.getTextSize(ylabel, font, 0.5, 1)
    label = np.full((24, lw + 16, 3), 255, np.uint8)  # the y label, written horizontally then turned
    cv2.putText(label, ylabel, (8, 17), font, 0.5, black, 1, cv2.LINE_AA)
    label = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)[: y0 - y1]
    cy = max(y1, (y0 + y1) // 2 - label.shape[0] // 2)
    img[cy: cy + label.shape[0], 8: 8 + label.shape[1]] = label
    for n, (name, points) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        curve = np.array([px(x, y) for x, y in points if math.isfinite(y)], np.int32)
        if len(curve) > 1:
            cv2.polylines(img, [curve.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        for x, y in curve if len(curve) <= 60 else ():
            cv2.circle(img, (int(x), int(y)), 3, colour, -1, cv2.LINE_AA)
        ly = y0 - 20 * (len(series) - n)  # the legend, bottom right above the x axis
        cv2.line(img, (x1 - 230, ly - 6), (x1 - 205, ly - 6), colour, 2, cv2.LINE_AA)
        cv2.putText(img, name, (x1 - 198, ly - 1), font, 0.45, black, 1, cv2.LINE_AA)
    if note:
        (lw, _), _ = cv2.getTextSize(note, font, 0.45, 1)
        cv2.putText(img, note, (x1 - lw, y1 - 8), font, 0.45, (80, 80, 80), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("OpenCV could not encode the plot")
    return png.tobytes()
