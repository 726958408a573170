"""Click trajectories as data, and SegAgent's trace JSON.

A trace file is ``{"info": {...}, "data": [trace, ...]}``; one trace (the release's field names, read by its tools)::

    {"image_name": "x.jpg", "height": H, "width": W,
     "gt_ann": {"object_id": 0, "caption": ["..."], "segmentation": COCO RLE, "bbox": [x, y, w, h], "area": A},
     "clicks_list": [{"idx": 0, "coor": [row, col], "is_positive": true, "mask": COCO RLE,
                      "box": [x, y, w, h], "area": A, "iou": 0.71}, ...]}

(``box`` / ``area`` of a click describe its mask; the release's ``evaluate_sample`` writes them and its
``check_record.py`` reads ``gt_ann.object_id``.) The file also carries the release's ``info`` object.

Masks are COCO RLE (pycocotools, ``counts`` as a string); ``coor`` is [row, col] in pixels of the
original image. ``mask`` is the mask AFTER the click. Two fields of ours ride along and are ignored
by the release's readers: ``start`` (the extra start state: the mask the first click was placed on
and how it was made) and ``ignore`` (the excluded band, COCO RLE) when there is one.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from segagent_backend.agent.types import Box, Click


def mask_to_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools' compressed form)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string/bytes counts, or uncompressed list counts) -> (H, W) bool."""
    from pycocotools import mask as coco_mask

    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE: let pycocotools compress it first
        h, w = rle["size"]
        rle = coco_mask.frPyObjects(rle, h, w)
    elif isinstance(counts, str):
        rle = {"size": rle["size"], "counts": counts.encode("ascii")}
    return coco_mask.decode(rle).astype(bool)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of the mask's pixels ([0, 0, 0, 0] when empty)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)]


@dataclass
class TraceStep:
    """One recorded click: ``click`` in pixels (x = column, y = row), ``mask`` (H, W) bool AFTER the
    click, ``iou`` of that mask against the ground truth (ignore band excluded)."""

    click: Click
    mask: np.ndarray
    iou: float


@dataclass
class StartState:
    """The mask a trajectory starts from when it is not empty: made by the tool from ``box`` and/or
    ``clicks`` (pixels), with ``iou`` against the ground truth. ``kind``: "box" or "points"."""

    kind: str
    mask: np.ndarray
    iou: float
    clicks: list[Click] = field(default_factory=list)
    box: Optional[Box] = None
    #: the tool's state after making the start mask (``Segmentation.logits``), fed back with the first
    #: click; not written to JSON (None after reading: the trajectory code recomputes it)
    logits: Optional[np.ndarray] = field(default=None, repr=False, compare=False)


@dataclass
class Trace:
    """One (image, object) trajectory. gt / ignore: (H, W) bool; captions: referring expressions
    (each one an SFT sample of its own); steps: the recorded clicks in order."""

    image_name: str
    gt: np.ndarray
    captions: list[str] = field(default_factory=list)
    steps: list[TraceStep] = field(default_factory=list)
    start: Optional[StartState] = None
    ignore: Optional[np.ndarray] = None
    #: which object of the image: the release's ``gt_ann.object_id``, any JSON value (an int; the
    #: release's referring sets write ``[index, 1]``)
    object_id: Any = 0

    @property
    def height(self) -> int:
        return int(self.gt.shape[0])

    @property
    def width(self) -> int:
        return int(self.gt.shape[1])

    @property
    def clicks(self) -> list[Click]:
        return [s.click for s in self.steps]


def trace_to_json(trace: Trace) -> dict:
    data = {
        "image_name": trace.image_name, "height": trace.height, "width": trace.width,
        "gt_ann": {"object_id": trace.object_id, "caption": list(trace.captions), "segmentation": mask_to_rle(trace.gt),
                   "bbox": mask_bbox(trace.gt), "area": int(np.count_nonzero(trace.gt))},
        "clicks_list": [
            {"idx": i, "coor": [int(round(s.click.y)), int(round(s.click.x))], "is_positive": bool(s.click.positive),
             "mask": mask_to_rle(s.mask), "box": mask_bbox(s.mask), "area": int(np.count_nonzero(s.mask)),
             "iou": float(s.iou)}
            for i, s in enumerate(trace.steps)
        ],
    }
    if trace.start is not None:
        start = trace.start
        data["start"] = {"kind": start.kind, "mask": mask_to_rle(start.mask), "iou": float(start.iou),
                         "clicks": [[int(round(c.y)), int(round(c.x)), bool(c.positive)] for c in start.clicks],
                         "box": [start.box.x1, start.box.y1, start.box.x2, start.box.y2] if start.box else None}
    if trace.ignore is not None and trace.ignore.any():
        data["ignore"] = mask_to_rle(trace.ignore)
    return data


def trace_from_json(data: dict) -> Trace:
    """One element of a trace file's ``data`` -> Trace. Raises ValueError naming what is wrong."""
    try:
        ann = data["gt_ann"]
        gt = rle_to_mask(ann["segmentation"])
        height, width = int(data.get("height", gt.shape[0])), int(data.get("width", gt.shape[1]))
        if gt.shape != (height, width):
            raise ValueError(f"gt mask is {gt.shape}, height/width say {(height, width)}")
        captions = ann.get("caption") or []
        captions = [captions] if isinstance(captions, str) else [str(c) for c in captions]
        steps = []
        for row in sorted(data.get("clicks_list", []), key=lambda r: r.get("idx", 0)):
            r, c = row["coor"]
            mask = rle_to_mask(row["mask"])
            if mask.shape != gt.shape:
                raise ValueError(f"click {row.get('idx')}: mask {mask.shape} differs from gt {gt.shape}")
            steps.append(TraceStep(Click(float(c), float(r), bool(row["is_positive"])), mask, float(row["iou"])))
        start = None
        if data.get("start"):
            s = data["start"]
            box = Box(*s["box"]) if s.get("box") else None
            clicks = [Click(float(c), float(r), bool(p)) for r, c, p in s.get("clicks", [])]
            start = StartState(s["kind"], rle_to_mask(s["mask"]), float(s["iou"]), clicks, box)
        ignore = rle_to_mask(data["ignore"]) if data.get("ignore") else None
        object_id = ann.get("object_id", 0)
        return Trace(str(data.get("image_name", "")), gt, captions, steps, start, ignore, object_id)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a SegAgent trace: missing or malformed {exc}") from None


def write_traces(path: Union[str, os.PathLike], traces: list[Trace], info: Optional[dict] = None) -> None:
    """Write a trace file ``{"info": info, "data": [...]}`` atomically (temp file + rename).

    ``info``: JSON-able description of how the traces were made (the release stores its arguments
    under ``info.args``; its ``merge_json.py`` expects the key)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps({"info": dict(info or {}), "data": [trace_to_json(t) for t in traces]}))
    os.replace(temp, path)


def read_traces(path: Union[str, os.PathLike]) -> list[Trace]:
    """Every trace of a trace file (``{"data": [...]}`` or a bare list)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    rows = data["data"] if isinstance(data, dict) else data
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(trace_from_json(row))
        except ValueError as exc:
            raise ValueError(f"{path}: trace {i}: {exc}") from None
    return out
