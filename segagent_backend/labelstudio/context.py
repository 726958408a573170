"""Interactive context (what smart tools send on every click) -> the annotator's prompt."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import RequestError
from .config import LabelConfig
from .control_models.keypoint_labels import PercentClick
from .control_models.rectangle_labels import PercentBox


@dataclass
class Prompt:
    """The annotator's clicks (in click order) and box, in percent; the label they used."""

    clicks: list[PercentClick] = field(default_factory=list)
    box: Optional[PercentBox] = None
    label: Optional[str] = None
    image_rotation: int = 0
    size: Optional[tuple[int, int]] = None  # (original_width, original_height) as Label Studio saw it


def parse_context(context: Any, config: LabelConfig) -> Optional[Prompt]:
    """``params.context`` -> Prompt, or None for a non-interactive call (context null or without ``result``).

    Raises RequestError for region types this config has no smart control for, malformed regions
    and percent values outside 0..100.
    """
    if context is None:
        return None
    if not isinstance(context, dict):
        raise RequestError("params.context must be an object or null")
    regions = context.get("result")
    if regions is None:
        return None
    if not isinstance(regions, list):
        raise RequestError("params.context.result must be a list of regions")
    prompt = Prompt()
    for region in regions:
        if not isinstance(region, dict):
            raise RequestError("every region in params.context.result must be an object")
        kind = str(region.get("type", "")).lower()
        if kind == "keypointlabels" and config.clicks is not None:
            click = config.clicks.click(region)
            prompt.clicks.append(click)
            prompt.label = prompt.label or click.label
        elif kind == "rectanglelabels" and config.box is not None:
            prompt.box = config.box.box(region)  # the last box drawn wins
            prompt.label = prompt.label or prompt.box.label
        else:
            smart = [c.name for c in (config.clicks, config.box) if c is not None] or "no control"
            raise RequestError(
                f"context region {region.get('id')!r} has type {region.get('type')!r}; this backend reads "
                f"keypointlabels/rectanglelabels of smart controls only (this config: {smart})"
            )
        prompt.image_rotation = _int(region.get("image_rotation"), prompt.image_rotation)
        if region.get("original_width") and region.get("original_height"):
            prompt.size = (_int(region["original_width"], 0), _int(region["original_height"], 0))
    return prompt


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
