"""Label Studio's brush masks: its own RLE (not COCO RLE), checked against the size it claims BEFORE the
SDK's ``decode_rle`` allocates anything, decoded, and united per record. One home for every reader of a
brush mask: annotations (training data), smart-brush context (a mask to refine) and the masks
``segagent refine`` starts from (``start_mask``)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

BRUSH = "brushlabels"
# The largest brush mask decoded at all (width x height); the RLE header's value count is checked against
# the region's size and this cap before the SDK's decoder allocates anything.
MAX_MASK_PIXELS = 50_000_000
# Label Studio's brush RLE spends at most ~4.5 bytes per pixel (4 values of 8 bits, every run a literal;
# a pixel checkerboard from the SDK's mask2rle takes 1.74); a longer list is not a mask of that size. The
# SDK's decoder costs ~1 us per RLE bit, so this and MAX_RLE_BYTES also bound the time of one decode.
MAX_RLE_BYTES_PER_PIXEL = 5
MAX_RLE_BYTES = 4_000_000
#: the model version of a refined prediction: ``refine-<version of the model that refined it>``
REFINED_PREFIX = "refine-"


class AnnotationError(ValueError):
    """This annotation (or brush mask) cannot be used: no brush region, empty mask, wrong size, ..."""


def rle_header(rle: Any) -> int:
    """The number of values a Label Studio brush RLE claims (its first 32 bits); AnnotationError when
    ``rle`` is not a list of bytes (ints 0..255) long enough to hold a header."""
    if not isinstance(rle, list) or len(rle) < 5:
        raise AnnotationError("a brush RLE must be a list of at least 5 byte values")
    if not all(type(b) is int and 0 <= b <= 255 for b in rle):
        raise AnnotationError("a brush RLE must hold integers 0..255 only")
    return int.from_bytes(bytes(rle[:4]), "big")


def check_rle(rle: Any, width: int, height: int) -> None:
    """Check a brush RLE against the size it claims to be drawn at, BEFORE decoding it: the header must
    claim exactly ``width * height * 4`` values (RGBA), the size must be within MAX_MASK_PIXELS and the
    list no longer than such a mask can need."""
    claimed = rle_header(rle)
    if width * height > MAX_MASK_PIXELS:
        raise AnnotationError(f"the brush mask is {width}x{height}, above {MAX_MASK_PIXELS} pixels")
    if claimed != width * height * 4:
        raise AnnotationError(f"the brush RLE header claims {claimed} values ({claimed / 4:g} pixels); the "
                              f"image is {width}x{height} ({width * height} pixels, {width * height * 4} values)")
    if len(rle) > min(MAX_RLE_BYTES_PER_PIXEL * width * height + 64, MAX_RLE_BYTES):
        raise AnnotationError(f"the brush RLE has {len(rle)} bytes, more than a {width}x{height} mask needs")


def decode_brush(rle: list[int], width: int, height: int) -> np.ndarray:
    """Label Studio brush RLE -> (height, width) bool; AnnotationError when it does not fit the size.

    The header is checked first (``check_rle``); only then does the SDK's ``decode_rle`` run.
    """
    check_rle(rle, width, height)
    try:
        flat = decode_rle(rle)
    except Exception:  # the SDK's bit reader fails in several ways on garbage
        raise AnnotationError("the brush RLE cannot be decoded") from None
    if flat.size != width * height * 4:
        raise AnnotationError(f"brush mask has {flat.size // 4} pixels, the image is {width}x{height}")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def union(rles: list, width: int, height: int) -> np.ndarray:
    """The (height, width) bool union of brush RLEs drawn at one size: every header is checked before
    anything is decoded (nothing is allocated for a mask that cannot fit)."""
    for rle in rles:
        check_rle(rle, width, height)
    out = np.zeros((height, width), dtype=bool)
    for rle in rles:
        out |= decode_brush(rle, width, height)
    return out


def regions_mask(regions: list[dict]) -> np.ndarray:
    """Brush regions of one record (a prediction's or an annotation's result) -> their (H, W) bool union at
    the one positive ``original_width`` x ``original_height`` they share (AnnotationError otherwise)."""
    sizes = {(r.get("original_width"), r.get("original_height")) for r in regions}
    if len(sizes) != 1 or not all(isinstance(v, int) and v > 0 for v in next(iter(sizes))):
        raise AnnotationError("the brush regions do not share one positive original_width x original_height")
    width, height = sizes.pop()
    return union([(r.get("value") or {}).get("rle") for r in regions], width, height)


def start_mask(task: Any, refine_from: str, model_version: Optional[str] = None) -> np.ndarray:
    """The brush mask of ``task`` (the SDK's task) to refine: the union of the brush regions of its latest
    prediction (of ``model_version`` when given; never a refined one) or of its latest submitted annotation
    (``refine_from`` "predictions" or "annotations"), at the size Label Studio drew it. AnnotationError when
    there is none or it does not decode."""
    if refine_from == "predictions":
        records = [{"result": p.result, "model_version": p.model_version} for p in task.predictions or []]
        records = [r for r in records if (r["model_version"] == model_version if model_version
                                          else not str(r["model_version"] or "").startswith(REFINED_PREFIX))]
    else:
        records = [a for a in task.annotations or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    for record in reversed(records):  # the latest first
        regions = [r for r in record.get("result") or [] if isinstance(r, dict) and r.get("type") == BRUSH]
        if regions:
            return regions_mask(regions)
    which = (f"{refine_from} of model version {model_version!r}" if model_version and refine_from == "predictions"
             else refine_from)
    raise AnnotationError(f"no brush mask in the task's {which}")
