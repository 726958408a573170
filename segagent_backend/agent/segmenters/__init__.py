"""Interactive segmentation tools behind one interface (``Segmenter``).

``build_segmenter`` imports only the tool asked for: GrabCut needs no torch at all.
"""
from __future__ import annotations

from typing import Optional

from .base import Segmenter
from .cache import EmbeddingCache

__all__ = ["Segmenter", "EmbeddingCache", "build_segmenter"]


def build_segmenter(
    kind: str,
    cache: EmbeddingCache,
    *,
    sam_checkpoint: Optional[str] = None,
    sam_type: Optional[str] = None,
    sam_model: Optional[str] = None,
    device: str = "auto",
    grabcut_max_side: int = 512,
    simpleclick_checkpoint: Optional[str] = None,
) -> Segmenter:
    """The tool named ``kind`` (``grabcut``, ``sam``, ``hf-sam`` or ``simpleclick``), loaded once, sharing ``cache``.

    ``device``: auto (CUDA when available), cpu, cuda or cuda:N. Raises ModelLoadError (from
    ``agent.loading``) naming the weights and the reason when they cannot be loaded.
    """
    if kind == "grabcut":
        from .grabcut import GrabCutSegmenter

        return GrabCutSegmenter(cache, max_side=grabcut_max_side)
    if kind == "sam":
        from .sam import SamSegmenter

        return SamSegmenter.from_checkpoint(sam_checkpoint, sam_type, device=device, cache=cache)
    if kind == "hf-sam":
        from .hf_sam import HFSamSegmenter

        return HFSamSegmenter.from_pretrained(sam_model, device=device, cache=cache)
    if kind == "simpleclick":
        from .simpleclick import SimpleClickSegmenter

        if not simpleclick_checkpoint:
            raise ValueError("the simpleclick segmenter needs a checkpoint (SEGAGENT_SIMPLECLICK_CHECKPOINT)")
        return SimpleClickSegmenter.from_checkpoint(simpleclick_checkpoint, device=device, cache=cache)
    raise ValueError(f"unknown segmenter {kind!r}: use grabcut, sam, hf-sam or simpleclick")
