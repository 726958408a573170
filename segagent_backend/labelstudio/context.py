"""Interactive context (what smart tools send on every click) -> the annotator's prompt.

A smart BrushLabels sends the annotator's brush regions: their union is the mask the episode starts
from (refinement). Their RLE headers are checked here, against the size each region claims, before
anything is decoded; ``Prompt.mask`` decodes them when the episode needs the mask.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import RequestError
from .brush import AnnotationError, check_rle, decode_brush
from .config import LabelConfig
from .control_models.base import first_label, number, short, value_object
from .control_models.keypoint_labels import PercentClick
from .control_models.rectangle_labels import PercentBox

CONTEXT = "params.context"
# regions beyond the clicks (boxes, deleted-click leftovers) a request may carry
EXTRA_REGIONS = 16
# (original_width, original_height) claimed by a region beyond this many pixels is refused before anything
# is allocated at that size (SEGAGENT_MAX_IMAGE_PIXELS is the service's own bound)
MAX_CLAIMED_PIXELS = 50_000_000


@dataclass
class Prompt:
    """The annotator's clicks (in click order) and box, in percent; the label they used."""

    clicks: list[PercentClick] = field(default_factory=list)
    box: Optional[PercentBox] = None
    label: Optional[str] = None
    image_rotation: int = 0
    size: Optional[tuple[int, int]] = None  # (original_width, original_height) as Label Studio saw it
    size_field: str = f"{CONTEXT}.result[0].original_width"  # where ``size`` came from (for errors)
    # brush regions of a smart BrushLabels: (field path, Label Studio RLE, (width, height)), headers checked
    brushes: list[tuple[str, list, tuple[int, int]]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # Label Studio's ids of the context's regions

    def to_json(self) -> dict:
        """The parsed prompt as JSON (``from_json`` rebuilds it without checking anything again)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Prompt":
        size = data.get("size")
        return cls(clicks=[PercentClick(**c) for c in data.get("clicks") or []],
                   box=PercentBox(**data["box"]) if data.get("box") else None, label=data.get("label"),
                   image_rotation=data.get("image_rotation", 0), size=tuple(size) if size else None,
                   size_field=data.get("size_field", cls.size_field),
                   brushes=[(where, rle, tuple(wh)) for where, rle, wh in data.get("brushes") or []],
                   ids=list(data.get("ids") or []))

    def mask(self, size: Optional[tuple[int, int]] = None) -> Optional[np.ndarray]:
        """The union of the brush regions, (H, W) bool, or None without brush regions: at the size they
        claim (Label Studio's view of the image), resized (nearest) to ``size`` = (width, height) of the
        loaded image when that differs (``check_claimed_size`` first). RequestError (422) naming the
        region when one does not decode to its size."""
        if not self.brushes:
            return None
        width, height = self.brushes[0][2]
        out = np.zeros((height, width), dtype=bool)
        for where, rle, _ in self.brushes:
            try:
                out |= decode_brush(rle, width, height)
            except AnnotationError as exc:
                raise RequestError(f"{where}.value.rle: {exc}", 422, f"{where}.value.rle") from None
        if size is not None and tuple(size) != (width, height):
            import cv2

            out = cv2.resize(out.astype(np.uint8), tuple(size), interpolation=cv2.INTER_NEAREST).astype(bool)
        return out


def parse_context(context: Any, config: LabelConfig, max_clicks: Optional[int] = None,
                  max_pixels: Optional[int] = None) -> Optional[Prompt]:
    """``params.context`` -> Prompt, or None for a non-interactive call (context null or without ``result``).

    Raises RequestError, naming the field (``params.context.result[2].value.x``), for region types this
    config has no smart control for, malformed regions, percent values outside 0..100, more than
    ``max_clicks`` clicks (SEGAGENT_MAX_CLICKS) and an ``original_width`` x ``original_height`` beyond
    ``max_pixels`` (SEGAGENT_MAX_IMAGE_PIXELS).
    """
    if context is None:
        return None
    if not isinstance(context, dict):
        raise RequestError(f"{CONTEXT} must be an object or null", field=CONTEXT)
    regions = context.get("result")
    if regions is None:
        return None
    if not isinstance(regions, list):
        raise RequestError(f"{CONTEXT}.result must be a list of regions", field=f"{CONTEXT}.result")
    if max_clicks is not None and len(regions) > max_clicks + EXTRA_REGIONS:
        raise RequestError(f"{CONTEXT}.result has {len(regions)} regions; at most {max_clicks} clicks "
                           f"(SEGAGENT_MAX_CLICKS) and {EXTRA_REGIONS} other regions are read", 413, f"{CONTEXT}.result")
    prompt = Prompt()
    for i, region in enumerate(regions):
        where = f"{CONTEXT}.result[{i}]"
        if not isinstance(region, dict):
            raise RequestError(f"{where} must be an object (a region)", field=where)
        kind = region.get("type")
        kind = kind.lower() if isinstance(kind, str) else ""
        if isinstance(region.get("id"), str):
            prompt.ids.append(region["id"])
        if kind == "keypointlabels" and config.clicks is not None:
            click = config.clicks.click(region, where)
            prompt.clicks.append(click)
            prompt.label = prompt.label or click.label
        elif kind == "rectanglelabels" and config.box is not None:
            prompt.box = config.box.box(region, where)  # the last box drawn wins
            prompt.label = prompt.label or prompt.box.label
        elif kind == "brushlabels" and config.brush_input is not None:
            prompt.brushes.append(brush_region(region, where, max_pixels, prompt.brushes))
            prompt.label = prompt.label or first_label(value_object(region, where), ("brushlabels", "labels"), where)
        else:
            smart = [c.name for c in (config.clicks, config.box, config.brush_input) if c is not None] or "no control"
            raise RequestError(
                f"{where}.type is {short(region.get('type'))}; this backend reads keypointlabels/rectanglelabels/"
                f"brushlabels of smart controls only (this config: {smart})", field=f"{where}.type"
            )
        if region.get("image_rotation") is not None:
            prompt.image_rotation = int(number(region["image_rotation"], f"{where}.image_rotation") % 360)
        size = _size(region, where, max_pixels)
        if size is not None:
            prompt.size, prompt.size_field = size, f"{where}.original_width"
    if max_clicks is not None and len(prompt.clicks) > max_clicks:
        raise RequestError(f"{CONTEXT}.result has {len(prompt.clicks)} clicks; at most {max_clicks} are read "
                           f"per request (SEGAGENT_MAX_CLICKS)", 413, f"{CONTEXT}.result")
    return prompt


def brush_region(region: dict, where: str, max_pixels: Optional[int], earlier: Sequence = ()) -> tuple[str, list, tuple[int, int]]:
    """One brush region -> (where, rle, (width, height)): ``value.format`` "rle" (or absent), ``value.rle``
    a Label Studio brush RLE whose header fits ``original_width`` x ``original_height`` (required, the same
    for every brush region). Nothing is decoded here."""
    value = value_object(region, where)
    if value.get("format", "rle") != "rle":
        raise RequestError(f"{where}.value.format is {short(value.get('format'))}; only Label Studio's brush "
                           f"\"rle\" is read", field=f"{where}.value.format")
    size = _size(region, where, max_pixels)
    if size is None:
        raise RequestError(f"{where} is a brush region without original_width and original_height",
                           field=f"{where}.original_width")
    if earlier and earlier[0][2] != size:
        raise RequestError(f"{where} is drawn at {size[0]}x{size[1]}, {earlier[0][0]} at "
                           f"{earlier[0][2][0]}x{earlier[0][2][1]}", field=f"{where}.original_width")
    rle = value.get("rle")
    try:
        check_rle(rle, *size)  # the header, before anything is decoded
    except AnnotationError as exc:
        raise RequestError(f"{where}.value.rle: {exc}", 422, f"{where}.value.rle") from None
    return where, rle, size


def _size(region: dict, where: str, max_pixels: Optional[int]) -> Optional[tuple[int, int]]:
    """(original_width, original_height) of a region: positive integers whose product is bounded, or None."""
    width, height = region.get("original_width"), region.get("original_height")
    if width is None or height is None:
        return None
    sides = []
    for key, raw in (("original_width", width), ("original_height", height)):
        value = number(raw, f"{where}.{key}")
        if value != int(value) or value < 1:
            raise RequestError(f"{where}.{key} must be a positive integer (pixels), got {short(raw)}",
                               field=f"{where}.{key}")
        sides.append(int(value))
    cap = min(max_pixels or MAX_CLAIMED_PIXELS, MAX_CLAIMED_PIXELS)
    if sides[0] * sides[1] > cap:
        raise RequestError(f"{where}.original_width x original_height = {sides[0]}x{sides[1]} is above "
                           f"{cap} pixels (SEGAGENT_MAX_IMAGE_PIXELS)", 413, f"{where}.original_width")
    return sides[0], sides[1]


def check_claimed_size(prompt: Prompt, width: int, height: int) -> None:
    """The size Label Studio claims must be the loaded image's, up to scale (either orientation, 2 %):
    a mask is only ever resized between two views of one picture, never allocated at an arbitrary size."""
    if prompt.size is None or prompt.size == (width, height):
        return
    claimed_w, claimed_h = prompt.size
    for w, h in ((width, height), (height, width)):
        if abs(claimed_w * h - claimed_h * w) <= 0.02 * w * claimed_h + claimed_h + w:
            return
    raise RequestError(f"{prompt.size_field} and original_height ({claimed_w}x{claimed_h}) do not match the "
                       f"task's image ({width}x{height})", 422, prompt.size_field)
