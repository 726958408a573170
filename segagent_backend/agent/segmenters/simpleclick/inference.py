"""SimpleClick's inference as SegAgent's release runs it: NoBRS, zoom-in to 448 x 448, horizontal flip, 0.49.

One call (``predict``) takes ALL clicks so far and the state the previous call left (``ClickState``: the
previous probability map at the image size and the zoom-in's region) and returns the new state:

1. Input: the image (3 channels in [0, 1]) and, for models that take it, the previous probability map as a
   fourth channel (zeros before the first click).
2. Zoom-in (skip_clicks = -1, target 448 x 448, expansion 1.4, min crop 200, recompute IoU 0.5, its own
   threshold 0.5): the region is the box of (previous probabilities > 0.5, plus the positive clicks' pixels),
   grown 1.4x around its centre (at least 200 px a side) and clamped to the image; the whole image when the
   previous prediction is empty (the first click). The region kept from the previous call is replaced only
   when a positive click lies outside it or its box IoU with the new one is below 0.5. The region of all
   four channels is resized to 448 x 448 (bilinear, corners aligned); clicks are mapped into it.
3. Flip: the input and its horizontal mirror run as a batch of two; clicks mirrored (col -> width - 1 - col).
4. The model's logits of the two are averaged (the mirror's flipped back), passed through a sigmoid,
   resized back to the region (bilinear, corners aligned) and pasted into zeros of the image size: the new
   probability map; the mask is probabilities > 0.49.

The position embedding is first resized to the 448 x 448 grid (``ViTBackbone.resize_pos_embed``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .clicks import Point, click_maps
from .model import SimpleClickModel

#: the release's settings (SegAgent evaltools: NoBRS predictor, zoom_in_params, prob_thresh)
TARGET_SIZE = (448, 448)
THRESHOLD = 0.49
ZOOM_THRESHOLD = 0.5
EXPANSION = 1.4
MIN_CROP = 200
RECOMPUTE_IOU = 0.5

#: (rmin, rmax, cmin, cmax), inclusive pixel bounds of the zoom-in region
Roi = tuple[int, int, int, int]


@dataclass
class ClickState:
    """What one call leaves for the next: ``probs`` (H, W) float32 tensor (the previous probability map, zeros
    before the first click) and ``roi`` (the zoom-in region kept, None before the first click)."""

    probs: torch.Tensor
    roi: Optional[Roi] = None

    @classmethod
    def empty(cls, height: int, width: int, device: torch.device | str = "cpu") -> "ClickState":
        return cls(torch.zeros(height, width, dtype=torch.float32, device=device), None)

    # the segmenter hands the state around as one float32 vector: roi (4 values, -1 = none), then probs
    def pack(self) -> np.ndarray:
        head = np.array(self.roi if self.roi is not None else (-1, -1, -1, -1), dtype=np.float32)
        return np.concatenate([head, self.probs.detach().float().cpu().numpy().ravel()])

    @classmethod
    def unpack(cls, packed: np.ndarray, height: int, width: int, device: torch.device | str = "cpu") -> "ClickState":
        packed = np.asarray(packed, dtype=np.float32)
        if packed.ndim != 1 or packed.size != 4 + height * width:
            raise ValueError(f"prev_logits must be a SimpleClick state of {4 + height * width} values for a "
                             f"{height}x{width} image, got shape {packed.shape}")
        roi = tuple(int(v) for v in packed[:4])
        probs = torch.from_numpy(packed[4:].reshape(height, width).copy()).to(device)
        return cls(probs, None if roi[0] < 0 else roi)


def _bbox(mask: np.ndarray) -> Roi:
    rows, cols = np.where(mask.any(axis=1))[0], np.where(mask.any(axis=0))[0]
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _expand(box: Roi, ratio: float, min_size: float) -> Roi:
    rmin, rmax, cmin, cmax = box
    rc, cc = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    h, w = max(ratio * (rmax - rmin + 1), min_size), max(ratio * (cmax - cmin + 1), min_size)
    return int(round(rc - 0.5 * h)), int(round(rc + 0.5 * h)), int(round(cc - 0.5 * w)), int(round(cc + 0.5 * w))


def _segment_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)
    return inter / max(1e-6, max(a[1], b[1]) - min(a[0], b[0]) + 1)


def box_iou(a: Roi, b: Roi) -> float:
    """IoU of two inclusive boxes as the product of the rows' and the columns' interval IoUs."""
    return _segment_iou(a[:2], b[:2]) * _segment_iou(a[2:], b[2:])


def object_roi(mask: np.ndarray, points: Sequence[Point]) -> Roi:
    """The zoom-in region of a non-empty (H, W) bool mask and the clicks (row, col, positive)."""
    mask = mask.copy()
    for r, c, positive in points:
        if positive:
            mask[int(r), int(c)] = True
    h, w = mask.shape
    rmin, rmax, cmin, cmax = _expand(_bbox(mask), EXPANSION, MIN_CROP)
    return max(0, rmin), min(h - 1, rmax), max(0, cmin), min(w - 1, cmax)


def _inside(roi: Roi, points: Sequence[Point]) -> bool:
    """Every positive click inside ``roi`` (its max bounds exclusive, as the reference checks)."""
    return all(roi[0] <= r < roi[1] and roi[2] <= c < roi[3] for r, c, positive in points if positive)


def next_roi(state: ClickState, points: Sequence[Point]) -> Roi:
    """The region the zoom-in crops for this call (the one kept, or a new one)."""
    h, w = state.probs.shape
    current: Roi = (0, h - 1, 0, w - 1)
    mask = (state.probs > ZOOM_THRESHOLD).cpu().numpy()
    if mask.any():
        current = object_roi(mask, points)
    kept = state.roi
    if kept is None or not _inside(kept, points) or box_iou(current, kept) < RECOMPUTE_IOU:
        return current
    return kept


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


@torch.inference_mode()
def predict(model: SimpleClickModel, image: torch.Tensor, points: Sequence[Point], state: ClickState,
            target_size: tuple[int, int] = TARGET_SIZE, with_flip: bool = True) -> ClickState:
    """One click step. ``image``: (1, 3, H, W) float32 in [0, 1] on the model's device; ``points``: every
    click so far, (row, col, positive) in image pixels; ``state``: what the previous step returned (or
    ``ClickState.empty``). Returns the new state (its ``probs`` > ``THRESHOLD`` is the mask)."""
    h, w = image.shape[2:]
    prev = state.probs.to(image.device)[None, None]
    frame = torch.cat((image, prev), dim=1) if model.with_prev_mask else image
    roi = next_roi(state, points)
    rmin, rmax, cmin, cmax = roi
    crop = _resize(frame[:, :, rmin:rmax + 1, cmin:cmax + 1], target_size)
    th, tw = target_size
    # clicks into the resized region, in double precision as the reference computes them
    zoomed = [(th * (r - rmin) / (rmax - rmin + 1), tw * (c - cmin) / (cmax - cmin + 1), p) for r, c, p in points]
    batches = [(crop, zoomed)]
    if with_flip:
        batches.append((torch.flip(crop, dims=[3]), [(r, tw - c - 1, p) for r, c, p in zoomed]))
    x = torch.cat([b for b, _ in batches], dim=0)
    radius, disks = model.cfg.norm_radius, model.cfg.use_disks
    maps = torch.stack([click_maps(pts, th, tw, radius, disks, x.device) for _, pts in batches])
    model.backbone.resize_pos_embed(target_size)
    logits = model(x[:, :3], maps, x[:, 3:] if model.with_prev_mask else None)
    logits = _resize(logits, target_size)  # the reference resizes once more to the input size (a no-op)
    if with_flip:
        logits = 0.5 * (logits[:1] + torch.flip(logits[1:], dims=[3]))
    probs = _resize(torch.sigmoid(logits), (rmax - rmin + 1, cmax - cmin + 1))
    if (rmax - rmin + 1, cmax - cmin + 1) != (h, w):  # pasted into zeros outside the region
        full = torch.zeros(1, 1, h, w, dtype=probs.dtype, device=probs.device)
        full[:, :, rmin:rmax + 1, cmin:cmax + 1] = probs
        probs = full
    return ClickState(probs[0, 0], roi)
