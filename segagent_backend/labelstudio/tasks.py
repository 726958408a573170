"""Label Studio tasks -> what to segment."""
from __future__ import annotations

from typing import Any, Optional

from ..errors import RequestError
from .config import LabelConfig


def task_id(task: Any) -> Optional[int]:
    return task.get("id") if isinstance(task, dict) else None


def image_url(task: Any, config: LabelConfig) -> str:
    """The URL of the task's image (``task.data[<Image value>]``)."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict):
        raise RequestError(f"task {task_id(task)!r} has no 'data' object")
    url = data.get(config.image_field)
    if not isinstance(url, str) or not url.strip():
        raise RequestError(f"task {task_id(task)!r} has no image in data.{config.image_field}")
    return url.strip()


def expression(task: Any, config: LabelConfig, label: Optional[str] = None) -> Optional[str]:
    """The referring expression: the configured task data field, else the label's own text."""
    data = task.get("data") if isinstance(task, dict) else None
    if config.expression_field and isinstance(data, dict):
        text = data.get(config.expression_field)
        if isinstance(text, str) and text.strip():
            return text.strip()
    return label or (config.brush.labels[0] if config.brush.labels else None)
