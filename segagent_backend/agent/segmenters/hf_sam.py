"""The transformers SAM family (``SamModel``, ``SamHQModel``, ``Sam2Model``, ``Sam3TrackerModel``,
``EdgeTamModel``; hub id or local folder) as one Segmenter, the ``hf-sam`` tool.

``config.model_type`` of ``SEGAGENT_SAM_MODEL`` picks the class (``hf_sam_models.FAMILIES``). The vision
encoder runs once per image (``_encode``; its output is kept in the shared byte-bounded cache); a click
runs only the prompt encoder and mask decoder on all clicks + the box + the previous low-res logits
(``_decode``), keeps the candidate with the best predicted IoU, and only that one is upscaled to the
original size. Preprocessing is the stock processor where it runs without torchvision (SAM, SAM-HQ),
else our own from ``preprocessor_config.json`` (``hf_sam_preprocess``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..loading import ModelLoadError, resolve_checkpoint, resolve_device
from .cache import EmbeddingCache
from .hf_sam_models import (SamFamily, checkpoint_key, decode, encode, family_of, load_family, mask_input_size,
                            model_side)
from .hf_sam_preprocess import ImagePreprocessor
from .prompted import PromptedSegmenter, SamEmbedding

__all__ = ["HFSamEmbedding", "HFSamSegmenter", "load_hf_sam"]


def load_hf_sam(checkpoint: Union[str, Path], device: str = "auto") -> tuple[Any, ImagePreprocessor]:
    """Load a transformers SAM-family model (eval mode, on ``device``) and its preprocessor.

    ``checkpoint`` is a local folder written by ``save_pretrained`` or a hub id (downloaded / taken from
    the HF cache; honours HF_HUB_OFFLINE); its ``config.model_type`` picks the class. Raises
    ModelLoadError naming ``checkpoint`` and the reason when the folder is missing, incomplete,
    unreadable or of an unsupported model type.
    """
    dev = resolve_device(device)
    model, _, preprocessor = load_family(resolve_checkpoint(checkpoint, "SAM model folder"), dev)
    return model, preprocessor


@dataclass(frozen=True)
class HFSamEmbedding(SamEmbedding):
    """What HFSamSegmenter caches for one image: ``features`` is the (1, C, h, w) image embedding,
    ``levels`` everything the decoder reads (``hf_sam_models.encode``'s tuple, ``features`` included);
    ``input_size`` the (h', w') of the resized image before padding."""

    levels: tuple[torch.Tensor, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self.levels)


class HFSamSegmenter(PromptedSegmenter):
    """A transformers SAM-family model (see :class:`PromptedSegmenter` for what ``segment`` returns)."""

    def __init__(
        self,
        model: Any,
        preprocessor: ImagePreprocessor,
        cache: Optional[EmbeddingCache] = None,
        namespace: Optional[str] = None,
    ):
        """``namespace`` keys this model's cache entries (default: unique to this model object)."""
        super().__init__(cache)
        self.model = model
        self.family: SamFamily = family_of(getattr(model.config, "model_type", None))
        self.preprocessor = preprocessor
        self.cache_namespace = namespace or f"hf-sam:{id(model)}"
        self._mask_input_size = mask_input_size(model, self.family)
        self._input_side = model_side(model, self.family)

    @classmethod
    def from_pretrained(
        cls, checkpoint: Union[str, Path], device: str = "auto", cache: Optional[EmbeddingCache] = None
    ) -> "HFSamSegmenter":
        """Load with :func:`load_hf_sam`; cache entries are keyed by the folder / hub id."""
        if checkpoint is None or str(checkpoint) == "":
            raise ModelLoadError("SEGAGENT_SAM_MODEL is not set: the hf-sam tool needs a hub id or folder")
        model, preprocessor = load_hf_sam(checkpoint, device)
        return cls(model, preprocessor, cache, namespace=f"hf-sam:{checkpoint_key(str(checkpoint))}")

    @property
    def processor(self) -> Optional[Any]:
        """The stock transformers processor when it is used (SAM, SAM-HQ), else None."""
        return self.preprocessor.processor

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """4x the image embedding grid (256 x 256 at 1024 input)."""
        return self._mask_input_size

    @property
    def input_side(self) -> int:
        """The side of the square input frame (1024; 1008 for SAM 3): a start mask's low-res logits cover it."""
        return self._input_side

    def _encode(self, image: np.ndarray) -> tuple[HFSamEmbedding, int]:
        prepared = self.preprocessor(image)
        levels = encode(self.model, self.family, prepared.pixel_values.to(self.device, self.model.dtype))
        main = levels[0] if self.family.model_type == "sam_hq" else levels[-1]
        emb = HFSamEmbedding(features=main, original_size=prepared.original_size, input_size=prepared.input_size,
                             levels=levels)
        return emb, emb.nbytes

    def _decode(self, emb, xy, labels, xyxy, prev):
        dev, dtype = self.device, self.model.dtype
        to_frame = self.preprocessor.to_input_frame
        points = point_labels = box = mask_input = None
        if len(xy):
            points = torch.as_tensor(to_frame(xy, emb.original_size, emb.input_size), dtype=dtype,
                                     device=dev)[None, None]  # (1, 1, N, 2)
            point_labels = torch.as_tensor(labels, dtype=torch.long, device=dev)[None, None]  # (1, 1, N)
        if xyxy is not None:
            corners = to_frame(xyxy.reshape(2, 2), emb.original_size, emb.input_size).reshape(4)
            box = torch.as_tensor(corners, dtype=dtype, device=dev)[None, None]  # (1, 1, 4)
        if prev is not None:
            mask_input = torch.as_tensor(prev, dtype=dtype, device=dev)[None]  # (1, 1, h, w)
        return decode(self.model, self.family, emb.levels, points, point_labels, box, mask_input)

    def _upscale(self, emb, chosen):
        return self.preprocessor.upscale(chosen, emb.original_size, emb.input_size)
