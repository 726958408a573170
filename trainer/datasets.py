"""Loaders for image + mask folders: the GrabCut set (``load_grabcut``) and any folder pair (``load_folder``).

GrabCut layout: ``root/manifest.json`` (rows with ``name``, ``image``, ``mask`` paths relative to ``root``
and an optional ``expression``), images as JPEG/PNG, masks as 8-bit trimaps:
0 = background, 255 = object, 128 = uncertain band to ignore.

``load_folder`` reads masks more leniently (``read_mask``): 0 = background, exactly 128 = ignore band,
any other non-zero value = object, so GrabCut trimaps, 0/255 and 0/1 masks all load.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

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
    captions: every referring expression of the object when there are several (``expression`` is
        the first); empty = just ``expression``.
    image_file: the image's file, relative to the dataset folder where possible ("" = unknown).
    """

    name: str
    image: np.ndarray
    gt: np.ndarray
    ignore: np.ndarray
    expression: str = ""
    captions: tuple[str, ...] = ()
    image_file: str = ""


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


def grabcut_names(root: Union[str, Path], limit: Optional[int] = None) -> list[str]:
    """The sample names of the manifest under ``root``, in manifest order (the first ``limit``)."""
    with open(Path(root) / "manifest.json", encoding="utf-8") as f:
        return [row["name"] for row in json.load(f)][:limit]


def load_grabcut(root: Union[str, Path], names: Optional[list[str]] = None,
                 limit: Optional[int] = None) -> list[Sample]:
    """The samples of the manifest under ``root`` in manifest order: all, those in ``names``, or the
    first ``limit`` (only the images asked for are read)."""
    root = Path(root)
    with open(root / "manifest.json", encoding="utf-8") as f:
        rows = json.load(f)[:limit]
    wanted = set(names) if names is not None else None
    samples = []
    for row in rows:
        if wanted is not None and row["name"] not in wanted:
            continue
        image = read_rgb(root / row["image"])
        gt, ignore = read_trimap(root / row["mask"])
        if gt.shape != image.shape[:2]:
            raise ValueError(f"{row['name']}: mask {gt.shape} does not match image {image.shape[:2]}")
        samples.append(Sample(row["name"], image, gt, ignore, row.get("expression", ""), image_file=row["image"]))
    return samples



# --- any folder of images + masks ------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MAX_LISTED = 20  # problems listed in one error message


def read_mask(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """A mask image as (gt, ignore), both (H, W) bool: read as 8-bit grey; 0 = background,
    exactly 128 = ignore band (like GrabCut trimaps), any other value = object."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    return (mask != 0) & (mask != TRIMAP_IGNORE), mask == TRIMAP_IGNORE


def _files_by_stem(folder: Path, suffixes: Sequence[str], problems: list[str]) -> dict[str, Path]:
    """stem -> file for the files of ``folder`` with one of ``suffixes`` (two files, one stem: a problem)."""
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in out:
                problems.append(f"{path.name} and {out[path.stem].name} share the stem {path.stem!r}")
            out[path.stem] = path
    return out


def _captions(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v)
    raise ValueError(f"expressions must be a string or a list of strings, got {value!r}")


def _find(value: str, bases: Sequence[Path], by_stem: dict[str, Path]) -> Optional[Path]:
    """A manifest's file reference: a path (absolute, or under one of ``bases``), or a bare stem."""
    path = Path(value)
    candidates = [path] if path.is_absolute() else [base / path for base in bases]
    found = next((c for c in candidates if c.is_file()), None)
    return found if found is not None or path.suffix or len(path.parts) > 1 else by_stem.get(value)


def _plan(images_dir: Path, masks_dir: Path, manifest: Optional[Path],
          problems: list[str]) -> list[tuple[str, Path, Optional[Path], tuple[str, ...]]]:
    """(name, image, mask or None, captions) per sample, in manifest order or by image file name."""
    images = _files_by_stem(images_dir, IMAGE_SUFFIXES, problems)
    masks = _files_by_stem(masks_dir, (".png",), problems)
    data = None
    if manifest is not None:
        with open(manifest, encoding="utf-8") as f:
            data = json.load(f)
    if isinstance(data, dict):  # name -> expression(s): pairing by stem, expressions looked up
        problems += [f"manifest names {k!r}: no such image in {images_dir}" for k in data if Path(k).stem not in images]
        texts = {Path(k).stem: _captions(v) for k, v in data.items()}
        return [(stem, path, masks.get(stem), texts.get(stem, ())) for stem, path in images.items()]
    if data is None:
        return [(stem, path, masks.get(stem), ()) for stem, path in images.items()]
    if not isinstance(data, list):
        raise ValueError(f"{manifest}: expected a list of rows or an object name -> expression")
    plan = []
    for i, row in enumerate(data):
        ref = row.get("image") or row.get("name") if isinstance(row, dict) else None
        if not ref:
            problems.append(f"manifest row {i}: no 'image'")
            continue
        image = _find(str(ref), [images_dir, manifest.parent], images)
        if image is None:
            problems.append(f"manifest row {i}: image {ref!r} not found in {images_dir}")
            continue
        mask = _find(str(row["mask"]), [masks_dir, manifest.parent], masks) if row.get("mask") else masks.get(image.stem)
        name = str(row.get("name") or (Path(row["mask"]).stem if row.get("mask") else image.stem))
        texts = _captions(row.get("captions", row.get("caption"))) or _captions(row.get("expression"))
        plan.append((name, image, mask, texts))
    return plan


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _load_one(name: str, image_path: Path, mask_path: Path, texts: tuple[str, ...], images_dir: Path) -> Sample:
    image = read_rgb(image_path)
    gt, ignore = read_mask(mask_path)
    if gt.shape != image.shape[:2]:
        raise ValueError(f"{name}: mask {mask_path.name} is {gt.shape[1]}x{gt.shape[0]} (WxH), "
                         f"image {image_path.name} is {image.shape[1]}x{image.shape[0]}")
    if not gt.any():
        only = " (it holds only the ignore value 128)" if ignore.any() else ""
        raise ValueError(f"{name}: mask {mask_path.name} has no object pixel{only}")
    return Sample(name, image, gt, ignore, texts[0] if texts else "", texts, _relative(image_path, images_dir))


def load_folder(images_dir: Union[str, Path], masks_dir: Union[str, Path],
                manifest: Optional[Union[str, Path]] = None) -> list[Sample]:
    """Samples from an image folder and a mask folder, paired by file stem.

    Images: JPEG/PNG/BMP/TIFF/WebP files of ``images_dir``; masks: ``<stem>.png`` in ``masks_dir``,
    read by ``read_mask`` (0 = background, 128 = ignore band, other values = object). Masks
    without an image are not used. ``manifest`` (JSON), optional, either

    * a list of rows ``{"image": name-or-path, "mask": name-or-path, "name": ..., "expression": str
      | "captions": [str, ...]}`` (paths relative to the folder or to the manifest's folder, e.g.
      the GrabCut ``manifest.json``; ``mask`` defaults to the image's stem; an image may appear in
      several rows with different masks, one object each): the manifest chooses the samples and
      their order;
    * or an object ``{image name or stem: expression or [expressions]}``: every image is used
      (sorted by file name), the manifest only supplies expressions.

    Every problem is collected and reported in one ValueError: a missing mask, a mask whose size
    differs from its image, an EMPTY mask (no object pixel: such samples are not skipped, fix or
    remove them), an unreadable file, a manifest name that matches no image.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise ValueError(f"{what} folder {folder} does not exist")
    problems: list[str] = []
    plan = _plan(images_dir, masks_dir, Path(manifest) if manifest is not None else None, problems)
    samples = []
    for name, image_path, mask_path, texts in plan:
        if mask_path is None:
            problems.append(f"{name}: no mask for {image_path.name} (looked for {masks_dir / (image_path.stem + '.png')})")
            continue
        try:
            samples.append(_load_one(name, image_path, mask_path, texts, images_dir))
        except (ValueError, FileNotFoundError) as exc:
            problems.append(str(exc))
    if problems:
        listed = "\n  - ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise ValueError(f"{len(problems)} problem(s) in {images_dir} + {masks_dir}:\n  - {listed}{more}")
    if not samples:
        raise ValueError(f"no images in {images_dir} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return samples
