"""SAM through transformers (``SamModel`` + ``SamProcessor``, hub id or local folder) as a Segmenter.

The vision encoder runs once per image (``_encode`` -> ``model.get_image_embeddings``); a click runs
only the prompt encoder and mask decoder (``model(image_embeddings=...)``) and only the chosen mask
is post-processed to the original size.

SAM 2 (``Sam2Model``) is not supported here: its image processor imports ``torchvision.ops`` at
import time (no PIL fallback), so it cannot even be built on the CPU machines this project is
tested on, and its embeddings are a multi-level list rather than one tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch

from ..types import Box, Click, Segmentation
from .base import Segmenter
from .cache import EmbeddingCache
from ..loading import ModelLoadError, resolve_device

if TYPE_CHECKING:
    from transformers import SamModel, SamProcessor

__all__ = ["HFSamEmbedding", "HFSamSegmenter", "load_hf_sam"]


def _looks_like_path(source: str) -> bool:
    """True for what must be a local folder: an existing path, or absolute / ./ ../ ~ forms.

    Anything else (e.g. ``facebook/sam-vit-base``) is treated as a hub id.
    """
    return Path(source).expanduser().exists() or source.startswith(("/", "./", "../", "~", ".\\")) or source in (".", "..")


def load_hf_sam(source: Union[str, Path], device: str = "auto") -> tuple["SamModel", "SamProcessor"]:
    """Load a transformers ``SamModel`` (eval mode, on ``device``) and its ``SamProcessor``.

    ``source`` is a local folder written by ``save_pretrained`` or a hub id (downloaded / taken from
    the HF cache; honours HF_HUB_OFFLINE). Raises ModelLoadError naming ``source`` and the reason
    when the folder is missing, incomplete or unreadable.
    """
    from transformers import SamModel, SamProcessor

    dev = resolve_device(device)
    src = str(source)
    if _looks_like_path(src):
        folder = Path(src).expanduser()
        if not folder.is_dir():
            reason = "it is a file, not a folder" if folder.exists() else "no such folder"
            raise ModelLoadError(f"SAM model folder {folder} cannot be used: {reason}")
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"SAM model folder {folder} has no config.json (not a save_pretrained folder)")
        src = str(folder)
    try:
        model = SamModel.from_pretrained(src)
    except Exception as exc:  # OSError (missing files, offline), ValueError (wrong model type), ...
        raise ModelLoadError(f"cannot load a SamModel from {src}: {type(exc).__name__}: {exc}") from exc
    try:
        processor = SamProcessor.from_pretrained(src)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a SamProcessor from {src}: {type(exc).__name__}: {exc}") from exc
    return model.to(dev).eval(), processor


@dataclass(frozen=True)
class HFSamEmbedding:
    """What ``_encode`` caches for one image.

    embeddings:    (1, C, h, w) float tensor on the model's device (C = 256 for the real models, h = w = 64).
    original_size: (H, W) of the original image.
    reshaped_size: (H', W') of the image resized so its long side is the processor's longest_edge.
    """

    embeddings: torch.Tensor
    original_size: tuple[int, int]
    reshaped_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.embeddings.element_size() * self.embeddings.nelement()


class HFSamSegmenter(Segmenter):
    """transformers SAM: clicks (+ box, + previous low-res logits) -> best of SAM's 3 candidate masks.

    ``segment`` returns ``Segmentation(mask=(H, W) bool, logits=(1, 256, 256) float32 low-res logits
    of the chosen mask, score=SAM's predicted IoU clamped to [0, 1])``.
    """

    def __init__(
        self,
        model: "SamModel",
        processor: "SamProcessor",
        cache: Optional[EmbeddingCache] = None,
        namespace: Optional[str] = None,
    ):
        """``namespace`` keys this model's cache entries (default: unique to this model object)."""
        super().__init__(cache)
        self.model = model
        self.processor = processor
        self.cache_namespace = namespace or f"hf-sam:{id(model)}"
        self._embedding: Optional[HFSamEmbedding] = None

    @classmethod
    def from_pretrained(
        cls, source: Union[str, Path], device: str = "auto", cache: Optional[EmbeddingCache] = None
    ) -> "HFSamSegmenter":
        """Load with :func:`load_hf_sam`; cache entries are keyed by the folder / hub id."""
        model, processor = load_hf_sam(source, device)
        key = str(Path(source).resolve()) if _looks_like_path(str(source)) else str(source)
        return cls(model, processor, cache, namespace=f"hf-sam:{key}")

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _encode(self, image: np.ndarray) -> tuple[HFSamEmbedding, int]:
        # channels_last stated explicitly: inference from the shape is ambiguous for an image 3 pixels high
        inputs = self.processor(images=image, input_data_format="channels_last", return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixel_values)
        emb = HFSamEmbedding(
            embeddings=embeddings,
            original_size=tuple(int(v) for v in inputs["original_sizes"][0]),
            reshaped_size=tuple(int(v) for v in inputs["reshaped_input_sizes"][0]),
        )
        return emb, emb.nbytes

    def _use(self, embedding: object, image: np.ndarray) -> None:
        assert isinstance(embedding, HFSamEmbedding)
        self._embedding = embedding

    def _scale(self, emb: HFSamEmbedding) -> np.ndarray:
        """(sx, sy): original pixels -> the processor's resized frame (what SamProcessor does to prompts)."""
        (oh, ow), (rh, rw) = emb.original_size, emb.reshaped_size
        return np.array([rw / ow, rh / oh])

    def segment(
        self,
        clicks: Sequence[Click],
        box: Optional[Box] = None,
        prev_logits: Optional[np.ndarray] = None,
    ) -> Segmentation:
        h, w = self.image_size
        emb = self._embedding
        assert emb is not None
        dev, dtype = self.device, self.model.dtype
        scale = self._scale(emb)
        kwargs: dict = {}
        if clicks:
            xy = np.array([[c.x, c.y] for c in (c.clamped(w, h) for c in clicks)], dtype=np.float64) * scale
            kwargs["input_points"] = torch.as_tensor(xy, dtype=dtype, device=dev)[None, None]  # (1, 1, N, 2) x, y
            labels = [1 if c.positive else 0 for c in clicks]
            kwargs["input_labels"] = torch.as_tensor(labels, dtype=torch.long, device=dev)[None, None]  # (1, 1, N)
        if box is not None:
            b = box.clamped(w, h)
            xyxy = np.array([b.x1, b.y1, b.x2, b.y2]) * np.tile(scale, 2)
            kwargs["input_boxes"] = torch.as_tensor(xyxy, dtype=dtype, device=dev)[None, None]  # (1, 1, 4)
        if prev_logits is not None:
            expected = (1, *self._mask_input_size())
            prev = np.asarray(prev_logits, dtype=np.float32)
            if prev.shape != expected:
                raise ValueError(f"prev_logits must have shape {expected}, got {prev.shape}")
            kwargs["input_masks"] = torch.as_tensor(prev, dtype=dtype, device=dev)[None]  # (1, 1, 256, 256)
        with torch.inference_mode():
            out = self.model(image_embeddings=emb.embeddings, multimask_output=True, **kwargs)
            iou = out.iou_scores[0, 0]  # (3,)
            best = int(torch.argmax(iou))
            chosen = out.pred_masks[0, :, best : best + 1]  # (1, 1, 256, 256) logits
            # post-process only the chosen candidate, to (H, W) of the original image
            full = self.processor.post_process_masks(
                [chosen.float()], [emb.original_size], [emb.reshaped_size], binarize=True
            )[0]
            score = float(iou[best])
        return Segmentation(
            mask=full[0, 0].cpu().numpy().astype(bool, copy=False),
            logits=chosen[0].float().cpu().numpy(),
            score=min(max(score, 0.0), 1.0),
        )

    def _mask_input_size(self) -> tuple[int, int]:
        """(h, w) of the low-res mask input: 4x the image embedding grid (256x256 for the real models)."""
        side = 4 * int(self.model.config.prompt_encoder_config.image_embedding_size)
        return side, side
