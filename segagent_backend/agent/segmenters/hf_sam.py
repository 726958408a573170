"""SAM through transformers (``SamModel`` + ``SamProcessor``, hub id or local folder) as a Segmenter.

The vision encoder runs once per image (``_encode`` -> ``model.get_image_embeddings``); a click runs
only the prompt encoder and mask decoder (``model(image_embeddings=...)``) and only the chosen mask
is post-processed to the original size.

SAM 2 (``Sam2Model``) is not supported here: its image processor imports ``torchvision.ops`` at
import time (no PIL fallback), so it cannot even be built on the CPU machines this project is
tested on, and its embeddings are a multi-level list rather than one tensor.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch

from ..loading import ModelLoadError, resolve_device
from .cache import EmbeddingCache
from .prompted import PromptedSegmenter, SamEmbedding

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


#: the embedding HFSamSegmenter caches (``features`` = the image embeddings, ``input_size`` = the processor's
#: reshaped size)
HFSamEmbedding = SamEmbedding


class HFSamSegmenter(PromptedSegmenter):
    """transformers SAM (see :class:`PromptedSegmenter` for what ``segment`` returns)."""

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

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """4x the image embedding grid."""
        side = 4 * int(self.model.config.prompt_encoder_config.image_embedding_size)
        return side, side

    def _encode(self, image: np.ndarray) -> tuple[SamEmbedding, int]:
        # channels_last stated explicitly: inference from the shape is ambiguous for an image 3 pixels high
        inputs = self.processor(images=image, input_data_format="channels_last", return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixel_values)
        emb = SamEmbedding(
            features=embeddings,
            original_size=tuple(int(v) for v in inputs["original_sizes"][0]),
            input_size=tuple(int(v) for v in inputs["reshaped_input_sizes"][0]),
        )
        return emb, emb.nbytes

    def _decode(self, emb, xy, labels, xyxy, prev):
        dev, dtype = self.device, self.model.dtype
        (oh, ow), (rh, rw) = emb.original_size, emb.input_size
        scale = np.array([rw / ow, rh / oh])  # original pixels -> the processor's resized frame (sx, sy)
        kwargs: dict = {}
        if len(xy):
            kwargs["input_points"] = torch.as_tensor(xy * scale, dtype=dtype, device=dev)[None, None]  # (1, 1, N, 2)
            kwargs["input_labels"] = torch.as_tensor(labels, dtype=torch.long, device=dev)[None, None]  # (1, 1, N)
        if xyxy is not None:
            kwargs["input_boxes"] = torch.as_tensor(xyxy * np.tile(scale, 2), dtype=dtype, device=dev)[None, None]
        if prev is not None:
            kwargs["input_masks"] = torch.as_tensor(prev, dtype=dtype, device=dev)[None]  # (1, 1, 256, 256)
        out = self.model(image_embeddings=emb.features, multimask_output=True, **kwargs)
        return out.pred_masks[0], out.iou_scores[0, 0]  # (1, 3, 256, 256) logits, (3,)

    def _upscale(self, emb, chosen):
        full = self.processor.post_process_masks([chosen.float()], [emb.original_size], [emb.input_size],
                                                 binarize=True)[0]
        return full[0, 0].cpu().numpy().astype(bool, copy=False)
