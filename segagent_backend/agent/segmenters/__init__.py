"""Interactive segmentation tools behind one interface (``Segmenter``), named in ONE table (``SEGMENTERS``).

Each builder imports only its own tool: GrabCut needs no torch at all, and reading the table costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..choices import pick
from .base import Segmenter
from .cache import EmbeddingCache

__all__ = ["SEGMENTERS", "Segmenter", "EmbeddingCache", "Tool", "ToolOptions", "build_segmenter"]


@dataclass(frozen=True)
class ToolOptions:
    """What any tool may be built from; each tool reads its own fields. The names are the settings' own
    (``wiring.tool_options`` copies them by name)."""

    sam_checkpoint: Optional[str] = None
    sam_type: Optional[str] = None  # vit_b / vit_l / vit_h, checked against the checkpoint
    sam_model: Optional[str] = None
    simpleclick_checkpoint: Optional[str] = None
    device: str = "auto"
    grabcut_max_side: int = 512


@dataclass(frozen=True)
class Tool:
    """One tool: its meaning, its builder, and the ``ToolOptions`` field naming the weights it needs (a
    ``.pth`` file when ``file``, else a hub id or model folder); None: it needs no weights."""

    help: str
    build: Callable[[ToolOptions, EmbeddingCache], Segmenter]
    weights: Optional[str] = None
    file: bool = False


def _grabcut(options: ToolOptions, cache: EmbeddingCache) -> Segmenter:
    from .grabcut import GrabCutSegmenter

    return GrabCutSegmenter(cache, max_side=options.grabcut_max_side)


def _sam(options: ToolOptions, cache: EmbeddingCache) -> Segmenter:
    from .sam import SamSegmenter

    return SamSegmenter.from_checkpoint(options.sam_checkpoint, options.sam_type, device=options.device, cache=cache)


def _hf_sam(options: ToolOptions, cache: EmbeddingCache) -> Segmenter:
    from .hf_sam import HFSamSegmenter

    return HFSamSegmenter.from_pretrained(options.sam_model, device=options.device, cache=cache)


def _simpleclick(options: ToolOptions, cache: EmbeddingCache) -> Segmenter:
    from .simpleclick import SimpleClickSegmenter

    if not options.simpleclick_checkpoint:
        raise ValueError("the simpleclick segmenter needs a checkpoint (SEGAGENT_SIMPLECLICK_CHECKPOINT)")
    return SimpleClickSegmenter.from_checkpoint(options.simpleclick_checkpoint, device=options.device, cache=cache)


SEGMENTERS: dict[str, Tool] = {
    "grabcut": Tool("no weights", _grabcut),
    "sam": Tool("segment-anything .pth", _sam, "sam_checkpoint", file=True),
    "hf-sam": Tool("the transformers SAM family: SAM, SAM-HQ, SAM 2, SAM 3 tracker, EdgeTAM", _hf_sam, "sam_model"),
    "simpleclick": Tool("SimpleClick plain ViT-B/L/H .pth, the paper's best tool", _simpleclick,
                        "simpleclick_checkpoint", file=True),
}


def build_segmenter(kind: str, cache: EmbeddingCache, **options) -> Segmenter:
    """The tool named ``kind`` (a key of ``SEGMENTERS``) built from ``ToolOptions(**options)``, sharing ``cache``.

    Raises ModelLoadError (from ``agent.loading``) naming the weights and the reason when they cannot be loaded.
    """
    return pick(SEGMENTERS, kind, "segmenter").build(ToolOptions(**options), cache)
