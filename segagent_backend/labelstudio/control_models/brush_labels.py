"""BrushLabels: where the mask is written, as Label Studio's own brush RLE."""
from __future__ import annotations

import uuid
from typing import Optional

import numpy as np
from label_studio_sdk.converter.brush import mask2rle

from .base import MaskOutput


class BrushLabelsModel(MaskOutput):
    tag = "BrushLabels"

    def regions(self, mask: np.ndarray, label: str, to_name: str, score: float, image_rotation: int = 0,
                region_id: Optional[str] = None) -> list[dict]:
        """The one brush region of ``mask``."""
        return [self.region(mask, label, to_name, score, image_rotation, region_id)]

    def region(self, mask: np.ndarray, label: str, to_name: str, score: float, image_rotation: int = 0,
               region_id: Optional[str] = None) -> dict:
        """One brush region for a (H, W) bool mask at the original image size, with id ``region_id`` (the
        region it refines) or a new one.

        ``rle`` is Label Studio's brush RLE (``mask2rle`` of 0/255 uint8), not COCO RLE.
        """
        height, width = mask.shape
        return {
            "id": region_id or uuid.uuid4().hex[:10],
            "from_name": self.name,
            "to_name": to_name,
            "type": "brushlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": int(image_rotation),
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [label]},
            "score": float(score),
            "readonly": False,
        }
