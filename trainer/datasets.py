"""Loaders for image + trimap benchmark folders (the GrabCut set and its layout).

Layout: ``root/manifest.json`` (rows with ``name``, ``image``, ``mask`` paths relative to ``root``
and an optional ``expression``), images as JPEG/PNG, masks as 8-bit trimaps:
0 = background, 255 = object, 128 = uncertain band to ignore.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

#: trimap values
TRIMAP_OBJECT = 255
TRIMAP_IGNORE = 128


@dataclass
class Sample:
    """One benchmark sample.

    image:  (H, W, 3) uint8 RGB.
    gt:     (H, W) bool, the object.
    ignore: (H, W) bool, pixels excluded from metrics and click placement.
    expression: a short referring expression ("" when the manifest has none).
    """

    name: str
    image: np.ndarray
    gt: np.ndarray
    ignore: np.ndarray
    expression: str = ""


def default_grabcut_dir(repo_root: Optional[Path] = None) -> Path:
    """``$SEGAGENT_GRABCUT_DIR``, else ``../shared/datasets/grabcut`` relative to the repository root."""
    env = os.environ.get("SEGAGENT_GRABCUT_DIR")
    if env:
        return Path(env)
    root = repo_root if repo_root is not None else Path(__file__).resolve().parent.parent
    return (root / ".." / "shared" / "datasets" / "grabcut").resolve()


def read_rgb(path: Union[str, Path]) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_trimap(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """A trimap file as (gt, ignore), both (H, W) bool."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    return mask == TRIMAP_OBJECT, mask == TRIMAP_IGNORE


def load_grabcut(root: Union[str, Path], names: Optional[list[str]] = None) -> list[Sample]:
    """All samples of the manifest under ``root`` (or only those in ``names``, in manifest order)."""
    root = Path(root)
    with open(root / "manifest.json", encoding="utf-8") as f:
        rows = json.load(f)
    wanted = set(names) if names is not None else None
    samples = []
    for row in rows:
        if wanted is not None and row["name"] not in wanted:
            continue
        image = read_rgb(root / row["image"])
        gt, ignore = read_trimap(root / row["mask"])
        if gt.shape != image.shape[:2]:
            raise ValueError(f"{row['name']}: mask {gt.shape} does not match image {image.shape[:2]}")
        samples.append(Sample(row["name"], image, gt, ignore, row.get("expression", "")))
    return samples
