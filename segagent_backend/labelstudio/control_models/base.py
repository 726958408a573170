"""What every control model shares: the control it wraps, how it recognises one, and the checked reading
of region fields (every caller mistake is a RequestError naming the field path, e.g.
``params.context.result[0].value.x``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

from ...errors import RequestError


def is_true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def is_smart(control) -> bool:
    """Label Studio sends interactive context for a control with smart/smartOnly, or a smart label."""
    if is_true(control.attr.get("smart")) or is_true(control.attr.get("smartOnly")):
        return True
    return any(is_true(label.attr.get("smart")) for label in (control.labels_attrs or {}).values())


@dataclass(frozen=True)
class ControlModel:
    """One control tag of the label config that points at the segmented Image: its name and labels, all a
    parsed config keeps of it (so a parsed config travels to a queue worker as JSON, ``LabelConfig.to_json``)."""

    tag: ClassVar[str] = ""
    name: str
    labels: list[str]

    @classmethod
    def of(cls, control) -> "ControlModel":
        """The model of the SDK's ``control``."""
        return cls(control.name, list(control.labels or []))

    @classmethod
    def is_control_matched(cls, control, image_name: str) -> bool:
        return control.tag.lower() == cls.tag.lower() and image_name in (control.to_name or [])


class SmartInput(ControlModel):
    """A control whose regions the annotator draws as prompts (smart keypoints, smart boxes): it matches only
    when smart, since only then does Label Studio send its regions in the request context."""

    @classmethod
    def is_control_matched(cls, control, image_name: str) -> bool:
        return super().is_control_matched(control, image_name) and is_smart(control)


class MaskOutput(ControlModel):
    """A control the mask is written to (BrushLabels, PolygonLabels): ``regions`` turns one (H, W) bool
    mask into this control's regions, each carrying ``score``. ``region_id``: the id of the region an
    interactive answer refines (Label Studio overwrites the area with that id when it is accepted)."""

    def label_for(self, used: Optional[str]) -> str:
        """The label the annotator used when it is one of ours, else our first label."""
        if used in self.labels:
            return used
        return self.labels[0] if self.labels else "Object"

    def regions(self, mask, label: str, to_name: str, score: float, image_rotation: int = 0,
                region_id: Optional[str] = None) -> list[dict]:
        raise NotImplementedError


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: caller values are echoed in errors, never whole."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(raw: Any, where: str) -> float:
    """A finite JSON number (not a bool, not a string); RequestError naming ``where`` otherwise."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise RequestError(f"{where} must be a number, got {short(raw)}", field=where)
    try:
        value = float(raw)
    except OverflowError:  # an integer beyond float range
        raise RequestError(f"{where} is out of range", field=where) from None
    if not math.isfinite(value):
        raise RequestError(f"{where} must be a finite number, got {short(raw)}", field=where)
    return value


def value_object(region: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """``region["value"]``: an object (missing: empty)."""
    value = region.get("value")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{where}.value must be an object, got {type(value).__name__}", field=f"{where}.value")
    return value


def first_label(value: Mapping[str, Any], keys: tuple[str, ...], where: str) -> Optional[str]:
    """The first label of the first of ``keys`` present (a list of strings); None when none is."""
    for key in keys:
        labels = value.get(key)
        if labels is None:
            continue
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise RequestError(f"{where}.value.{key} must be a list of label strings", field=f"{where}.value.{key}")
        if labels:
            return labels[0]
    return None


def percent(value: Mapping[str, Any], key: str, where: str, required: bool = True) -> float:
    """``value[key]`` as a percentage in [0, 100]; RequestError names the field (``where``: the region's
    path, e.g. ``params.context.result[0]``) otherwise."""
    raw = value.get(key)
    if raw is None and not required:
        return 0.0
    result = number(raw, f"{where}.value.{key}")
    if not 0.0 <= result <= 100.0:
        raise RequestError(f"{where}.value.{key}={short(raw)} is outside 0..100 (percent of the image)",
                           field=f"{where}.value.{key}")
    return result
