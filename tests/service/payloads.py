"""Label Studio 1.23 payload shapes (see the protocol doc), built for our test images."""
from __future__ import annotations

from typing import Optional

CONFIG = (
    '<View><Image name="image" value="$image" zoom="true"/>'
    '<Text name="expression" value="$expression"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Banana"/><Label value="Apple"/></BrushLabels>'
    '<KeyPointLabels name="tag2" toName="image" smart="true"><Label value="Banana" smart="true"/>'
    '<Label value="Apple" smart="true"/></KeyPointLabels>'
    '<RectangleLabels name="tag3" toName="image" smart="true"><Label value="Banana"/></RectangleLabels>'
    '</View>'
)


def keypoint(x_pct: float, y_pct: float, width: int, height: int, positive: Optional[bool] = True,
             label: str = "Banana", rid: str = "k1") -> dict:
    region = {
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x_pct, "y": y_pct, "width": 0.32, "labels": [label], "keypointlabels": [label]},
        "id": rid, "from_name": "tag2", "to_name": "image", "type": "keypointlabels", "origin": "manual",
    }
    if positive is not None:
        region["is_positive"] = positive
    return region


def rectangle(x: float, y: float, w: float, h: float, width: int, height: int, label: str = "Banana") -> dict:
    return {
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
        "id": "r1", "from_name": "tag3", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
    }


def predict_body(image_url: str, regions: Optional[list], config: str = CONFIG, task_id: int = 7) -> dict:
    return {
        "tasks": [{"id": task_id, "data": {"image": image_url, "expression": "the red disk"},
                   "annotations": [], "predictions": []}],
        "project": "3.1746612998",
        "label_config": config,
        "params": {"login": None, "password": None,
                   "context": None if regions is None else {"result": regions}},
    }
