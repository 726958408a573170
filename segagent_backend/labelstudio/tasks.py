"""Label Studio tasks -> what to segment."""
from __future__ import annotations

from typing import Any, Optional

from ..errors import RequestError
from .config import LabelConfig

MAX_ID = 2**63 - 1  # Label Studio's ids are 64-bit database keys


def valid_id(value: Any) -> Optional[int]:
    """``value`` when it is a Label Studio id (a positive 64-bit integer, not a bool), else None.
    Only such ids ever reach a file name, a cache key or a URL path."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
        return value
    return None


def task_id(task: Any) -> Optional[int]:
    """The task's id when it is a non-negative 64-bit integer (0 included: some exports start there), else None."""
    value = task.get("id") if isinstance(task, dict) else None
    return value if value == 0 and type(value) is int else valid_id(value)


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
    if label is not None and not isinstance(label, str):
        label = None
    return label or (config.labels[0] if config.labels else None)
