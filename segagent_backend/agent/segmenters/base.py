"""The one small interface every interactive segmentation tool implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Sequence

import numpy as np

from ..types import Box, Click, Segmentation
from .cache import EmbeddingCache, image_digest


class Segmenter(ABC):
    """Set an image once, then turn clicks (+ optional box, + the previous call's logits) into a mask.

    Usage::

        seg.set_image(rgb)                                  # (H, W, 3) uint8 RGB
        out = seg.segment([Click(120, 80)])                 # first click
        out = seg.segment([Click(120, 80), Click(40, 30, False)], prev_logits=out.logits)

    ``set_image`` looks the image's embedding up in the shared cache (keyed by content) and only
    encodes on a miss. Not thread-safe: callers serialise use of one instance.
    """

    #: distinguishes cache entries of different models sharing one cache
    cache_namespace: str = "segmenter"
    #: whether ``Segmentation.score`` estimates the mask's IoU (tracks its quality: Spearman >= 0.5 against the
    #: true IoU in ``bench/score_quality.py``). Off: a prediction made by this tool alone is sent to Label Studio
    #: without ``score`` (``labelstudio.predictions``). On for the SAM family (their IoU head is trained for it).
    score_estimates_iou: bool = True

    def __init__(self, cache: Optional[EmbeddingCache] = None):
        self.cache = cache if cache is not None else EmbeddingCache(256 * 2**20)
        self._image_size: Optional[tuple[int, int]] = None  # (H, W)
        self._image_key: Optional[tuple[str, str]] = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image set last."""
        if self._image_size is None:
            raise RuntimeError("set_image() must be called before segment()")
        return self._image_size

    @property
    def image_key(self) -> tuple[str, str]:
        """(cache namespace, content digest) of the image set last: identifies model + image."""
        if self._image_key is None:
            raise RuntimeError("set_image() must be called before segment()")
        return self._image_key

    def set_image(self, image: np.ndarray, digest: Optional[str] = None) -> None:
        """Prepare ``image``: (H, W, 3) uint8 RGB. Encodes only when the cache misses.

        ``digest``: the image's content digest when the caller already has it (``image_key[1]`` of an
        earlier ``set_image`` of the same, unchanged array), so switching back to an image in a
        lockstep loop does not hash every pixel again.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        key = (self.cache_namespace, digest or image_digest(image))
        embedding = self.cache.get(key)
        if embedding is None:
            embedding, nbytes = self._encode(image)
            self.cache.put(key, embedding, nbytes)
        self._use(embedding, image)
        self._image_size = image.shape[:2]
        self._image_key = key

    @abstractmethod
    def _encode(self, image: np.ndarray) -> tuple[object, int]:
        """Compute the per-image embedding; return it and its size in bytes."""

    @abstractmethod
    def _use(self, embedding: object, image: np.ndarray) -> None:
        """Make ``embedding`` (of ``image``) the current one."""

    def mask_prior(self, mask: np.ndarray) -> np.ndarray:
        """A start mask as this tool's state: the ``prev_logits`` that make the next ``segment`` call
        continue from ``mask`` ((H, W) bool, on the image set last) instead of from nothing.

        SAM-family tools: the mask as low-res ``mask_input`` logits; GrabCut: its working mask, which
        also seeds GrabCut as probable object / background. ValueError when ``mask`` is not (H, W);
        NotImplementedError for a tool that cannot start from a mask.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot start from a mask")

    def _check_prior(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` as (H, W) bool of the image set last; ValueError otherwise."""
        mask = np.asarray(mask)
        if mask.shape != tuple(self.image_size):
            raise ValueError(f"the start mask is {mask.shape}, the image is {tuple(self.image_size)} (H, W)")
        return mask.astype(bool, copy=False)

    @abstractmethod
    def segment(self, clicks: Sequence[Click], box: Optional[Box] = None,
                prev_logits: Optional[np.ndarray] = None) -> Segmentation:
        """All clicks so far (pixels inside the original image: the episode engine clamps them) and an
        optional box (XYXY pixels, inside the image) -> the best mask at the original size.

        ``prev_logits`` is the ``logits`` of this segmenter's previous call on the same image, or
        ``mask_prior(start_mask)`` (SAM feeds it back as ``mask_input``). With several candidate masks the best-scoring one
        is kept.
        """
