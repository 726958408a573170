"""What the policy sees: the image with the current mask painted on it (SegAgent's overlay)."""
from __future__ import annotations

import cv2
import numpy as np

GREEN = (0, 255, 0)


def overlay_mask(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, color: tuple = GREEN,
                 truncate: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB + (H, W) bool mask -> (H, W, 3) uint8 RGB.

    On mask pixels ``out = (1 - alpha) * image + alpha * color`` (rounded half to even); elsewhere
    the image unchanged. No contour, no markers. Returns a new array. ``truncate``: the release's
    arithmetic (the float blend assigned to uint8, i.e. floored), which the released model saw.
    """
    out = image.copy()
    if mask.any() and truncate:
        out[mask] = ((1.0 - alpha) * image[mask] + alpha * np.asarray(color, np.float64)).astype(np.uint8)
    elif mask.any():
        # blend the whole image with OpenCV's SIMD kernel, then a masked copy: ~5x faster than
        # boolean indexing or np.copyto(where=...) on a 0.15 MP image
        tint = np.empty_like(image)
        tint[...] = color
        blended = cv2.addWeighted(image, 1.0 - alpha, tint, alpha, 0.0)
        cv2.copyTo(blended, np.ascontiguousarray(mask).view(np.uint8), out)
    return out
