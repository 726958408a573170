"""Interactive segmentation tools behind one interface (``Segmenter``).

``build_segmenter`` imports only the tool asked for: GrabCut needs no torch at all.
"""
from __future__ import annotations

from typing import Optional

from .base import Segmenter
from .cache import EmbeddingCache

__all__ = ["Segmenter", "EmbeddingCache", "build_segmenter", "resolve_device"]


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_segmenter(
    kind: str,
    cache: EmbeddingCache,
    *,
    sam_checkpoint: Optional[str] = None,
    sam_type: Optional[str] = None,
    sam_model: Optional[str] = None,
    device: str = "auto",
    grabcut_max_side: int = 512,
) -> Segmenter:
    """The tool named ``kind`` (``grabcut``, ``sam`` or ``hf-sam``), loaded once, sharing ``cache``."""
    if kind == "grabcut":
        from .grabcut import GrabCutSegmenter

        return GrabCutSegmenter(cache, max_side=grabcut_max_side)
    if kind == "sam":
        from .sam import SamSegmenter

        return SamSegmenter(sam_checkpoint, model_type=sam_type, device=resolve_device(device), cache=cache)
    if kind == "hf-sam":
        from .hf_sam import HFSamSegmenter

        return HFSamSegmenter(sam_model, device=resolve_device(device), cache=cache)
    raise ValueError(f"unknown segmenter {kind!r}: use grabcut, sam or hf-sam")
