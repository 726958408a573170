"""PolygonLabels: the mask as polygons, for exports that need them (COCO, YOLO-seg).

How a (H, W) bool mask becomes Label Studio polygon regions (``mask_polygons``):

- **Contours**: ``cv2.findContours`` with ``RETR_CCOMP`` (outer boundaries and the holes directly inside
  them) on the 8-connected parts of the mask.
- **Simplification**: ``cv2.approxPolyDP`` within ``TOLERANCE_PX`` of the traced boundary; a part whose
  polygon, rasterised back with ``cv2.fillPoly``, matches its pixels at IoU below ``PART_MIN_IOU`` (thin
  shapes) is simplified again at half the tolerance, down to ``MIN_TOLERANCE_PX``, then not at all.
  Holes whose simplified outline has fewer than 3 points are dropped.
- **Several parts**: each outer contour (each 8-connected part of the mask, including an island inside a
  hole) is its own region, all with the same label and score.
- **Holes**: Label Studio polygons have no holes, so each hole is cut into the polygon of the part around
  it through a *keyhole bridge*: the outline runs from the nearest vertex of the polygon to the nearest
  vertex of the hole, around the hole in the opposite direction, and back along the same segment. Filled
  with either rule (even-odd, or non-zero winding: the hole's winding cancels the outline's), the hole
  stays empty; only the zero-width bridge is drawn. In the editor the bridge shows as one doubled edge.
  (Bridges run between nearest vertices; one may cross another hole of the same part.)
- **Coordinates**: percent of the image, the pixel grid's continuous frame: pixel column ``c`` spans
  ``[c, c + 1)``, so a boundary pixel's centre is at ``(c + 0.5) * 100 / width``; Label Studio's COCO and
  YOLO exports multiply percent by the size / 100, so exported polygons run through the centres of the
  mask's boundary pixels.
- **Tiny parts**: a part whose outline has fewer than 3 distinct points (one pixel, a straight one-pixel
  line) becomes a thin rotated rectangle around its pixel centres.
"""
from __future__ import annotations

import uuid
from typing import Optional

import cv2
import numpy as np

from .base import MaskOutput

# How far (pixels of the image) a simplified polygon may stray from the mask's traced boundary at first.
# 1 px: on the GrabCut set's masks ~8x fewer points than the traced boundary, IoU >= 0.99 with the mask
# (tests/service/test_polygon_labels.py).
TOLERANCE_PX = 1.0
# A part's polygon rasterised back (cv2.fillPoly) must match the part's pixels at least this well, else it
# is simplified again at half the tolerance (down to MIN_TOLERANCE_PX, then not at all): thin shapes keep
# more points, large smooth ones fewer.
PART_MIN_IOU = 0.99
MIN_TOLERANCE_PX = 0.2
# decimals kept of each percent coordinate (1e-4 % of a 10 000 px side is 0.01 px)
DECIMALS = 4


def mask_polygons(mask: np.ndarray, tolerance: float = TOLERANCE_PX) -> list[np.ndarray]:
    """The polygons of a (H, W) bool mask: one (N, 2) float array of (x, y) pixel centres per part,
    holes bridged in (see the module docstring). An empty mask has none."""
    binary = np.ascontiguousarray(mask, dtype=np.uint8)
    if not binary.any():
        return []
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    _, parts = cv2.connectedComponents(binary, connectivity=8)  # one 8-connected component per outer contour
    polygons = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:  # a hole: bridged into its parent
            continue
        holes, child = [], hierarchy[i][2]
        while child != -1:
            holes.append(contours[child])
            child = hierarchy[child][0]
        x, y, w, h = cv2.boundingRect(contour)
        first = contour[0, 0]
        part = parts[y:y + h, x:x + w] == parts[first[1], first[0]]
        step = tolerance
        while True:
            polygon = _polygon(contour, holes, step)
            if step <= 0 or _iou(_fill(polygon - (x, y), h, w), part) >= PART_MIN_IOU:
                break
            step = step / 2 if step / 2 >= MIN_TOLERANCE_PX else 0.0
        polygons.append(polygon)
    return polygons


def _polygon(contour: np.ndarray, holes: list[np.ndarray], tolerance: float) -> np.ndarray:
    """One part's polygon: its outer contour and holes simplified within ``tolerance``, holes bridged in."""
    outer = _simplified(contour, tolerance)
    if len(outer) < 3:
        return _covering_rectangle(contour)
    kept = [hole for hole in (_simplified(h, tolerance) for h in holes) if len(hole) >= 3]
    return _bridged(outer, kept)


def _fill(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """``polygon`` (pixel centres) rasterised with cv2.fillPoly at 1/16 pixel precision."""
    out = np.zeros((height, width), np.uint8)
    cv2.fillPoly(out, [np.round(polygon * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def _simplified(contour: np.ndarray, tolerance: float) -> np.ndarray:
    """approxPolyDP of a closed contour, as (N, 2) float, consecutive duplicates removed."""
    points = cv2.approxPolyDP(contour, tolerance, True) if tolerance > 0 else contour
    points = points.reshape(-1, 2).astype(np.float64)
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1) if len(points) > 1 else np.ones(len(points), bool)
    return points[keep]


def _covering_rectangle(contour: np.ndarray) -> np.ndarray:
    """The rotated rectangle around the pixel centres of a degenerate part (one pixel, a straight line),
    grown by a quarter pixel each side so it has an area and stays within those pixels."""
    (cx, cy), (w, h), angle = cv2.minAreaRect(contour.reshape(-1, 2).astype(np.float32))
    return cv2.boxPoints(((cx, cy), (w + 0.5, h + 0.5), angle)).astype(np.float64)


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _bridged(outer: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """``outer`` with each hole cut in through a keyhole bridge between nearest vertices, the hole run in
    the opposite direction (so both fill rules leave it empty)."""
    polygon = outer
    sign = np.sign(_signed_area(outer))
    for hole in holes:
        if np.sign(_signed_area(hole)) == sign:
            hole = hole[::-1]
        distances = ((polygon[:, None, :] - hole[None, :, :]) ** 2).sum(axis=2)
        i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
        loop = np.concatenate([hole[j:], hole[:j], hole[j:j + 1]])
        polygon = np.concatenate([polygon[: i + 1], loop, polygon[i:]])
    return polygon


class PolygonLabelsModel(MaskOutput):
    """A PolygonLabels control: the mask as one polygon region per part (holes bridged in)."""

    tag = "PolygonLabels"
    tolerance: float = TOLERANCE_PX

    def regions(self, mask: np.ndarray, label: str, to_name: str, score: float,
                image_rotation: int = 0, region_id: Optional[str] = None) -> list[dict]:
        """Polygon regions for a (H, W) bool mask at the original image size, largest part first; each
        carries ``score``. Points are ``[x %, y %]`` of the image (``mask_polygons``). Always new ids
        (``region_id`` names the brush region a refinement replaces; the parts' count changes)."""
        height, width = mask.shape
        polygons = sorted(mask_polygons(mask, self.tolerance), key=lambda p: -abs(_signed_area(p)))
        return [self._region(polygon, width, height, label, to_name, score, image_rotation) for polygon in polygons]

    def _region(self, polygon: np.ndarray, width: int, height: int, label: str, to_name: str, score: float,
                image_rotation: int) -> dict:
        scale = np.array([100.0 / width, 100.0 / height])
        points = np.clip((polygon + 0.5) * scale, 0.0, 100.0).round(DECIMALS)
        return {
            "id": uuid.uuid4().hex[:10],
            "from_name": self.name,
            "to_name": to_name,
            "type": "polygonlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": int(image_rotation),
            "value": {"points": points.tolist(), "polygonlabels": [label], "closed": True},
            "score": float(score),
            "readonly": False,
        }

