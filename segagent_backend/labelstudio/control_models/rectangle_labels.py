"""RectangleLabels (smart): the annotator's box prompt."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ...agent.types import Box
from .base import SmartInput, first_label, number, percent, value_object


@dataclass(frozen=True)
class PercentBox:
    """A box in percent of the image: top-left (x, y), size, rotation in degrees about the top-left corner."""

    x: float
    y: float
    width: float
    height: float
    rotation: float
    label: Optional[str]

    def to_pixels(self, width: int, height: int) -> Box:
        """The axis-aligned pixel box (XYXY) around the (possibly rotated) rectangle."""
        x0, y0 = self.x * width / 100.0, self.y * height / 100.0
        w, h = self.width * width / 100.0, self.height * height / 100.0
        cos, sin = math.cos(math.radians(self.rotation)), math.sin(math.radians(self.rotation))
        corners = [(x0 + dx * cos - dy * sin, y0 + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        return Box(min(xs), min(ys), max(xs), max(ys)).clamped(width, height)


class BoxInput(SmartInput):
    tag = "RectangleLabels"

    def box(self, region: Mapping[str, Any], where: str = "region") -> PercentBox:
        """One context region -> the box; ``where``: the region's field path, named by every RequestError."""
        value = value_object(region, where)
        rotation = value.get("rotation")
        rotation = 0.0 if rotation is None else number(rotation, f"{where}.value.rotation") % 360.0
        return PercentBox(
            percent(value, "x", where),
            percent(value, "y", where),
            percent(value, "width", where),
            percent(value, "height", where),
            rotation,
            first_label(value, ("rectanglelabels", "labels"), where),
        )
