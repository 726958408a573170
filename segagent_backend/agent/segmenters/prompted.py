"""What the two SAM segmenters share: the cached embedding, the prompts, the best of SAM's candidates.

A SAM-family tool encodes an image once (``_encode``); a click runs only its prompt encoder and mask
decoder (``_decode``) on the cached embedding, and only the chosen candidate is upscaled to the
original size (``_upscale``).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..types import Box, Click, Segmentation
from .base import Segmenter


#: the magnitude of a start mask's low-res logits (SAM's own logits of a confident mask are of this order;
#: its threshold is 0)
PRIOR_LOGIT = 10.0


@dataclass(frozen=True)
class SamEmbedding:
    """What ``_encode`` caches for one image.

    features:      (1, C, h, w) float tensor on the model's device (C = prompt dim, 256 for the real models;
                   h = w = 64).
    original_size: (H, W) of the original image.
    input_size:    (H', W') of the image resized so its long side is the model's input side (before padding).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


class PromptedSegmenter(Segmenter):
    """A SAM: clicks (+ box, + previous low-res logits) -> the best of its candidate masks.

    ``segment`` returns ``Segmentation(mask=(H, W) bool, logits=(1, 256, 256) float32 low-res logits
    of the chosen mask, score=SAM's predicted IoU clamped to [0, 1])``. Clicks and box are pixels
    inside the image (the episode engine clamps them).
    """

    _embedding: Optional[SamEmbedding] = None

    @property
    @abstractmethod
    def mask_input_size(self) -> tuple[int, int]:
        """(h, w) of the low-res mask input (256x256 for the real models)."""

    @property
    def input_side(self) -> int:
        """The side of the square input frame the low-res logits cover (1024 for the real models): the
        image resized to ``input_size`` sits in its top-left corner, padded to it."""
        raise NotImplementedError(f"{type(self).__name__} does not say its input frame: it cannot start from a mask")

    def mask_prior(self, mask: np.ndarray) -> np.ndarray:
        """A start mask ((H, W) bool) -> (1, h, w) float32 low-res logits for ``mask_input``: the mask
        resized to ``input_size``, padded to ``input_side`` (background), resized to ``mask_input_size``,
        then +PRIOR_LOGIT on the object, -PRIOR_LOGIT elsewhere (linear across the resized edges).
        ``_upscale`` of it gives the mask back (its own inverse up to the low-res grid)."""
        emb = self._embedding
        if emb is None:
            raise RuntimeError("set_image() must be called before mask_prior()")
        mask = self._check_prior(mask)
        side, (ih, iw), (h, w) = self.input_side, emb.input_size, self.mask_input_size
        frame = torch.from_numpy(mask.astype(np.float32))[None, None]
        with torch.inference_mode():
            frame = F.interpolate(frame, (ih, iw), mode="bilinear", align_corners=False, antialias=True)
            frame = F.pad(frame, (0, side - iw, 0, side - ih))
            frame = F.interpolate(frame, (h, w), mode="bilinear", align_corners=False, antialias=True)
            logits = (frame[0] * 2.0 - 1.0).clamp(-1.0, 1.0) * PRIOR_LOGIT
        return logits.numpy().astype(np.float32)

    def _use(self, embedding: object, image: np.ndarray) -> None:
        assert isinstance(embedding, SamEmbedding)
        self._embedding = embedding

    @abstractmethod
    def _decode(self, emb: SamEmbedding, xy: np.ndarray, labels: np.ndarray, xyxy: Optional[np.ndarray],
                prev: Optional[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on ``emb``: xy (N, 2) float64 x, y and labels (N,) int64 (1 =
        positive) of the clicks in original pixels (N may be 0), xyxy (4,) float64 the box or None, prev
        (1, h, w) float32 the previous low-res logits or None. Returns (low-res logits (1, K, h, w), scores (K,))."""

    @abstractmethod
    def _upscale(self, emb: SamEmbedding, chosen: torch.Tensor) -> np.ndarray:
        """The chosen candidate's logits (1, 1, h, w) -> the (H, W) bool mask of the original image."""

    def segment(self, clicks: Sequence[Click], box: Optional[Box] = None,
                prev_logits: Optional[np.ndarray] = None) -> Segmentation:
        emb = self._embedding
        if emb is None:
            raise RuntimeError("set_image() must be called before segment()")
        xy = np.array([[c.x, c.y] for c in clicks], dtype=np.float64).reshape(-1, 2)
        labels = np.array([1 if c.positive else 0 for c in clicks], dtype=np.int64)
        xyxy = np.array([box.x1, box.y1, box.x2, box.y2], dtype=np.float64) if box is not None else None
        prev = None
        if prev_logits is not None:
            expected = (1, *self.mask_input_size)
            prev = np.asarray(prev_logits, dtype=np.float32)
            if prev.shape != expected:
                raise ValueError(f"prev_logits must have shape {expected}, got {prev.shape}")
        with torch.inference_mode():
            low_res, scores = self._decode(emb, xy, labels, xyxy, prev)
            best = int(torch.argmax(scores))
            chosen = low_res[:, best : best + 1]  # upscale only the chosen candidate
            mask = self._upscale(emb, chosen)
            logits = chosen[0].float().cpu().numpy()
            score = float(scores[best])
        return Segmentation(mask=mask, logits=logits, score=min(max(score, 0.0), 1.0))
