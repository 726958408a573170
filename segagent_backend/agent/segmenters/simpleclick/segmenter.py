"""SimpleClick behind the ``Segmenter`` interface (``SEGAGENT_SEGMENTER=simpleclick``).

Unlike SAM, SimpleClick feeds the clicks into the ViT itself: there is no per-image embedding to reuse, so
every click runs the whole network (twice: the image and its mirror, as a batch) on the 448 x 448 zoom-in
region. The cache keeps only the image as a float tensor. The state between calls (``Segmentation.logits``
/ ``prev_logits``) is the previous probability map and the zoom-in region, packed into one float32 vector
(``ClickState.pack``): pass it back unchanged. Clicks are rounded to whole pixels (the release hands
SimpleClick integer (row, col) pixels). A box is not a SimpleClick prompt: it is ignored.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ...loading import resolve_device
from ...types import Box, Click, Segmentation
from ..base import Segmenter
from ..cache import EmbeddingCache
from .checkpoint import describe, load_simpleclick
from .inference import TARGET_SIZE, THRESHOLD, ClickState, predict
from .model import SimpleClickModel

log = logging.getLogger(__name__)

__all__ = ["SimpleClickSegmenter"]


class SimpleClickSegmenter(Segmenter):
    """SimpleClick NoBRS with zoom-in to 448 and flip averaging; mask = probability > 0.49.

    ``segment`` returns ``Segmentation(mask=(H, W) bool, logits=the packed state (4 + H*W float32 values),
    score=the mean probability inside the mask (0 for an empty mask))``.
    """

    #: Not sent to Label Studio: no trained SimpleClick weights exist here to show that the mean probability
    #: tracks the mask's IoU (bench/score_quality.py measures a tool before its score is trusted).
    score_estimates_iou = False

    def __init__(self, model: SimpleClickModel, cache: Optional[EmbeddingCache] = None,
                 namespace: Optional[str] = None, with_flip: bool = True,
                 target_size: tuple[int, int] = TARGET_SIZE):
        super().__init__(cache)
        self.model = model.eval()
        self.with_flip = with_flip
        self.target_size = target_size
        self.cache_namespace = namespace or f"simpleclick:{id(model)}"
        model.backbone.resize_pos_embed(target_size)  # once: every call runs at the target size
        self._image: Optional[torch.Tensor] = None

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, Path], device: str = "auto",
                        cache: Optional[EmbeddingCache] = None) -> "SimpleClickSegmenter":
        """Load a SimpleClick ``.pth`` (the published ``cocolvis_vit_*.pth`` as they are; see
        :func:`~.checkpoint.load_simpleclick`). ModelLoadError naming the file when it cannot be used."""
        model = load_simpleclick(checkpoint, resolve_device(device))
        log.info("loaded %s from %s", describe(model.cfg), checkpoint)
        return cls(model, cache, namespace=f"simpleclick:{Path(checkpoint).resolve()}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, image: np.ndarray) -> tuple[torch.Tensor, int]:
        # as torchvision's ToTensor: CHW float32 in [0, 1]
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32).div(255)
        t = t[None].to(self.device)
        return t, t.element_size() * t.nelement()

    def _use(self, embedding: object, image: np.ndarray) -> None:
        assert isinstance(embedding, torch.Tensor)
        self._image = embedding

    def _state(self, prev_logits: Optional[np.ndarray]) -> ClickState:
        h, w = self.image_size
        if prev_logits is None:
            return ClickState.empty(h, w, self.device)
        return ClickState.unpack(prev_logits, h, w, self.device)

    def mask_prior(self, mask: np.ndarray) -> np.ndarray:
        """A start mask as the previous prediction (probability 1 inside, 0 outside) with no zoom-in region
        yet: the first click zooms in around the mask and its positive clicks."""
        if self._image is None:
            raise RuntimeError("set_image() must be called before mask_prior()")
        mask = self._check_prior(mask)
        return ClickState(torch.from_numpy(mask.astype(np.float32)), None).pack()

    def _points(self, clicks: Sequence[Click]) -> list[tuple[int, int, bool]]:
        h, w = self.image_size
        return [(min(max(int(round(c.y)), 0), h - 1), min(max(int(round(c.x)), 0), w - 1), bool(c.positive))
                for c in clicks]

    def segment(self, clicks: Sequence[Click], box: Optional[Box] = None,
                prev_logits: Optional[np.ndarray] = None) -> Segmentation:
        if self._image is None:
            raise RuntimeError("set_image() must be called before segment()")
        state = self._state(prev_logits)
        if clicks:
            state = predict(self.model, self._image, self._points(clicks), state, self.target_size, self.with_flip)
        probs = state.probs
        mask_t = probs > THRESHOLD
        score = float(probs[mask_t].mean()) if bool(mask_t.any()) else 0.0
        return Segmentation(mask=mask_t.cpu().numpy(), logits=state.pack(), score=score)
