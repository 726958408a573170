"""Referring-segmentation data in the RefCOCO/SegAgent layout, and SegAgent's prediction layout.

Data (the release's ``evaltools`` reads the same file)::

    {"data": [{"image_name": "x.jpg" | COCO image id, "height": H, "width": W,
               "gt_ann": {"caption": ["sentence", ...], "segmentation": COCO RLE | polygons}}, ...]}

Each SENTENCE is one sample (:func:`read_refs`), in file order; nothing is truncated (the release's
evaluator stops after 5000 samples and skips image names holding ".png": ``segagent eval --release-scoring``
does both).
``segmentation``: compressed RLE (``counts`` a string), uncompressed RLE (``counts`` a list) or
polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixels (x = column), decoded by pycocotools.

Predictions (:func:`prediction_record`), one record per sample, as the release's ``refcocog_eval``
writes them and its ``eval_result_iou.py`` reads them::

    {"img_path": ..., "height": H, "width": W, "caption": ["sentence"], "gt_mask": <segmentation as given>,
     "masks": null, "click_id": 0, "outputs": <last answer>,
     "pred_list": [{"click_id": i, "clicks": {"is_positive": bool, "coords": [row, col]},
                    "used_box": [x1, y1, x2, y2] | null, "mask": COCO RLE (the mask AFTER click i + 1),
                    "outputs": <the answer of step i, whose "Current IOU" scores the mask after i clicks>}]}

:func:`release_selection` / :func:`score_predictions` read such a file back exactly as the release does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from segagent_backend.agent.metrics import ciou, intersection_union
from segagent_backend.agent.protocol import release_estimates
from segagent_backend.agent.types import Box, Click

from .datasets import Sample, read_rgb
from .traces import mask_to_rle


@dataclass(frozen=True)
class RefEntry:
    """One sample: sentence ``sentence`` of object ``index`` (its position in ``data``).

    image_name: the file under the images folder (``.jpg`` added to a name without a suffix, a COCO id
    turned into ``COCO_train2014_<12 digits>.jpg``). segmentation: the annotation as the file holds it.
    """

    index: int
    sentence: int
    image_name: str
    height: int
    width: int
    caption: str
    segmentation: Any

    @property
    def name(self) -> str:
        return f"{Path(self.image_name).stem}#{self.index}.{self.sentence}"


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (RLE dict, uncompressed RLE, polygon list; None = empty) -> (H, W) bool."""
    from pycocotools import mask as coco_mask

    if segmentation is None:
        return np.zeros((height, width), dtype=bool)
    if isinstance(segmentation, list):  # polygons: several parts of one object, merged
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rle = coco_mask.merge(coco_mask.frPyObjects([list(map(float, p)) for p in segmentation], height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        counts = segmentation["counts"]
        rle = {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"segmentation must be COCO RLE or polygons, got {type(segmentation).__name__}")
    mask = coco_mask.decode(rle).astype(bool)
    if mask.ndim == 3:  # pycocotools returns (H, W, n) for a list of RLEs
        mask = mask.any(axis=2)
    if mask.shape != (height, width):
        raise ValueError(f"segmentation is {mask.shape[1]}x{mask.shape[0]} (WxH), the entry says {width}x{height}")
    return mask


def _image_name(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"image_name must be a file name or a COCO image id, got {value!r}")
    if isinstance(value, int):
        return f"COCO_train2014_{value:012d}.jpg"
    return value if Path(value).suffix else value + ".jpg"


def refs_from_json(data: Any, limit: Optional[int] = None, where: str = "", skip_png: bool = False) -> list[RefEntry]:
    """Every sentence of every object of ``data`` (``{"data": [...]}`` or a bare list), the first ``limit``.
    ``skip_png``: objects whose ``image_name`` holds ".png" are left out, as the release's loader does."""
    rows = data.get("data") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(f"{where}expected {{\"data\": [...]}} (the RefCOCO/SegAgent layout)")
    out: list[RefEntry] = []
    for i, row in enumerate(rows):
        if limit is not None and len(out) >= limit:
            break
        if skip_png and isinstance(row, dict) and isinstance(row.get("image_name"), str) and ".png" in row["image_name"]:
            continue
        try:
            ann = row["gt_ann"]
            captions = ann["caption"]
            captions = [captions] if isinstance(captions, str) else list(captions)
            if not captions or not all(isinstance(c, str) and c for c in captions):
                raise ValueError("gt_ann.caption must be a non-empty list of sentences")
            if "segmentation" not in ann:
                raise KeyError("gt_ann.segmentation")
            height, width = int(row["height"]), int(row["width"])
            name = _image_name(row["image_name"])
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{where}data[{i}]: {what}") from None
        for j, caption in enumerate(captions):
            out.append(RefEntry(i, j, name, height, width, caption, ann["segmentation"]))
    return out[:limit]


def read_refs(path: Union[str, Path], limit: Optional[int] = None, skip_png: bool = False) -> list[RefEntry]:
    """The samples of a RefCOCO/SegAgent-layout JSON file (one per sentence), in file order (``skip_png``:
    see :func:`refs_from_json`)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return refs_from_json(data, limit, f"{path}: ", skip_png)


def find_image(images_dir: Path, image_name: str) -> Path:
    """The image file: ``images_dir/image_name``, else (a COCO name) under ``mscoco/images/train2014/``."""
    for candidate in (images_dir / image_name, images_dir / "mscoco" / "images" / "train2014" / image_name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(2, "image not found (give the images folder with --images)", str(images_dir / image_name))


def load_ref_sample(entry: RefEntry, images_dir: Path, image: Optional[np.ndarray] = None) -> Sample:
    """``entry`` as a Sample (image (H, W, 3) uint8 RGB read unless given, gt decoded, no ignore band)."""
    if image is None:
        image = read_rgb(find_image(images_dir, entry.image_name))
    if image.shape[:2] != (entry.height, entry.width):
        raise ValueError(f"{entry.image_name}: the image is {image.shape[1]}x{image.shape[0]} (WxH), "
                         f"data[{entry.index}] says {entry.width}x{entry.height}")
    gt = decode_segmentation(entry.segmentation, entry.height, entry.width)
    return Sample(entry.name, image, gt, np.zeros_like(gt), entry.caption, (entry.caption,), entry.image_name)


# --- SegAgent's prediction layout ------------------------------------------------------------

def prediction_record(img_path: str, caption: str, height: int, width: int, gt_mask: Any,
                      masks: Sequence[np.ndarray], clicks: Sequence[Click], outputs: Sequence[str],
                      box: Optional[Box] = None) -> dict:
    """One sample's record. masks[i]: (H, W) bool AFTER clicks[i] (pixels, x = column); outputs[i]: the
    answer text of step i (the one that placed clicks[i]); len(outputs) may exceed len(masks) by one
    (a last answer without a click). ``coords`` are [row, col] integers, as the release writes them."""
    used_box = None if box is None else [box.x1, box.y1, box.x2, box.y2]
    pred_list = [{"click_id": i, "clicks": {"is_positive": bool(c.positive), "coords": [int(round(c.y)), int(round(c.x))]},
                  "used_box": used_box, "mask": mask_to_rle(m), "outputs": outputs[i] if i < len(outputs) else None}
                 for i, (m, c) in enumerate(zip(masks, clicks))]
    return {"img_path": img_path, "height": int(height), "width": int(width), "caption": [caption],
            "gt_mask": gt_mask, "masks": None, "click_id": 0, "outputs": outputs[-1] if outputs else None,
            "pred_list": pred_list}


def release_selection(record: dict) -> Optional[int]:
    """Index in ``pred_list`` of the mask the release's evaluator scores (None: no mask at all, a sample the
    release's scorer skips): the first argmax i of the estimates as the release reads them together
    (:func:`~segagent_backend.agent.protocol.release_estimates`), then i - 1 for i > 0, else 0."""
    pred_list = record.get("pred_list") or []
    if not pred_list:
        return None
    best = int(np.argmax(release_estimates([p.get("outputs") for p in pred_list])))
    return best - 1 if best > 0 else 0


def read_predictions(path: Union[str, Path]) -> list[dict]:
    """The records of a prediction file (a list of records, or ``{"data": [...]}``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    records = data.get("data") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) and "pred_list" in r for r in records):
        raise ValueError("expected a list of records with pred_list")
    return records


def score_predictions(records: Sequence[dict], click_id: Optional[int] = None, release: bool = False) -> dict:
    """cIoU, gIoU and each sample's IoU of prediction records (ours or the release's): the mask of
    :func:`release_selection`, or ``pred_list[click_id]``; a record without masks scores an empty mask, or
    with ``release`` is dropped as the release's scorer drops it (its IoU is then None; ``dropped`` counts
    them). A record's ``ignore`` (COCO RLE, ours only: an image + mask folder's 128 band) is left out of both."""
    inters, unions, ious = [], [], []
    dropped = 0
    for record in records:
        if release and not record.get("pred_list"):
            dropped += 1
            ious.append(None)
            continue
        height, width = int(record["height"]), int(record["width"])
        gt = decode_segmentation(record.get("gt_mask"), height, width)
        index = release_selection(record) if click_id is None else min(click_id, len(record["pred_list"]) - 1)
        pred = (decode_segmentation(record["pred_list"][index]["mask"], height, width)
                if index is not None and index >= 0 else np.zeros_like(gt))
        ignore = decode_segmentation(record["ignore"], height, width) if record.get("ignore") else None
        inter, union = intersection_union(pred, gt, ignore)
        inters.append(inter)
        unions.append(union)
        ious.append(inter / union if union else 1.0)
    kept = [v for v in ious if v is not None]
    return {"samples": len(kept), "dropped": dropped, "ciou": ciou(inters, unions),
            "giou": float(np.mean(kept)) if kept else float("nan"), "ious": ious}
