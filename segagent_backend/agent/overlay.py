"""What the policy sees: the image with the current mask painted on it (SegAgent's overlay)."""
from __future__ import annotations

import numpy as np

GREEN = np.array([0, 255, 0], dtype=np.float32)


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, color: np.ndarray = GREEN) -> np.ndarray:
    """(H, W, 3) uint8 RGB + (H, W) bool mask -> (H, W, 3) uint8 RGB.

    On mask pixels ``out = (1 - alpha) * image + alpha * color``; elsewhere the image unchanged.
    No contour, no markers. Returns a new array.
    """
    out = image.copy()
    if mask.any():
        blended = (1.0 - alpha) * image[mask].astype(np.float32) + alpha * color
        out[mask] = np.round(blended).astype(np.uint8)  # round half to even, like OpenCV/PIL blending
    return out
