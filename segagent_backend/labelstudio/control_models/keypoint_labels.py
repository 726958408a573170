"""KeyPointLabels: a smart one brings the annotator's clicks; a plain one shows our click trajectory."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ...agent.types import Click
from .base import ControlModel, SmartInput, first_label, is_smart, percent, value_object


@dataclass(frozen=True)
class PercentClick:
    """A click in percent of the image (0..100), as Label Studio sends it."""

    x: float
    y: float
    positive: bool
    label: Optional[str]

    def to_pixels(self, width: int, height: int) -> Click:
        """x_px = x * width / 100, clamped to the image (``Click.from_percent``: the one rule)."""
        return Click.from_percent(self.x, self.y, self.positive, width, height)


class ClickInput(SmartInput):
    """A smart KeyPointLabels control: every click of the annotator arrives in the request context."""

    tag = "KeyPointLabels"

    def click(self, region: Mapping[str, Any], where: str = "region") -> PercentClick:
        """One context region -> a click. Alt+click sends ``is_positive: false``; a missing flag is positive.

        ``where``: the region's field path in the request, named by every RequestError.
        """
        value = value_object(region, where)
        return PercentClick(
            percent(value, "x", where),
            percent(value, "y", where),
            region.get("is_positive", True) is not False,
            first_label(value, ("keypointlabels", "labels"), where),
        )


class TrajectoryOutput(ControlModel):
    """A non-smart KeyPointLabels control on which the clicks that made a mask are shown, in order."""

    tag = "KeyPointLabels"

    @classmethod
    def is_control_matched(cls, control, image_name: str) -> bool:
        return super().is_control_matched(control, image_name) and not is_smart(control)

    def _label(self, positive: bool) -> str:
        wanted = "pos" if positive else "neg"
        for label in self.labels:
            if label.lower().startswith(wanted):
                return label
        if not self.labels:
            return "positive" if positive else "negative"
        return self.labels[0] if positive or len(self.labels) == 1 else self.labels[1]

    def regions(self, clicks: Sequence[Click], to_name: str, width: int, height: int, image_rotation: int = 0) -> list[dict]:
        """Keypoint regions (percent) for pixel ``clicks``, in click order."""
        return [
            {
                "id": uuid.uuid4().hex[:10],
                "from_name": self.name,
                "to_name": to_name,
                "type": "keypointlabels",
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": int(image_rotation),
                "value": {
                    "x": 100.0 * c.x / width,
                    "y": 100.0 * c.y / height,
                    "width": 0.3,
                    "keypointlabels": [self._label(c.positive)],
                },
                "readonly": True,
            }
            for c in clicks
        ]
