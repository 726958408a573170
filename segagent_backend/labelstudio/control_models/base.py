"""What every control model shares: the control it wraps and how it recognises one."""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

from ...errors import RequestError


def is_true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def is_smart(control) -> bool:
    """Label Studio sends interactive context for a control with smart/smartOnly, or a smart label."""
    if is_true(control.attr.get("smart")) or is_true(control.attr.get("smartOnly")):
        return True
    return any(is_true(label.attr.get("smart")) for label in (control.labels_attrs or {}).values())


class ControlModel:
    """Wraps one control tag of the label config that points at the segmented Image."""

    tag: ClassVar[str] = ""

    def __init__(self, control):
        self.control = control
        self.name: str = control.name
        self.labels: list[str] = list(control.labels or [])

    @classmethod
    def is_control_matched(cls, control, image_name: str) -> bool:
        return control.tag.lower() == cls.tag.lower() and image_name in (control.to_name or [])


def percent(value: Mapping[str, Any], key: str, region_id: Any, required: bool = True) -> float:
    """``value[key]`` as a percentage in [0, 100]; RequestError names the region otherwise."""
    raw = value.get(key)
    if raw is None and not required:
        return 0.0
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise RequestError(f"region {region_id!r}: value.{key} must be a number, got {raw!r}") from None
    if not math.isfinite(number) or not 0.0 <= number <= 100.0:
        raise RequestError(f"region {region_id!r}: value.{key}={raw!r} is outside 0..100 (percent of the image)")
    return number
