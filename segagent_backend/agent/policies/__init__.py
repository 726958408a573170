"""Policies: who decides the next click (an MLLM, the standard simulator, or the annotator).

``build_policy`` imports only the kind asked for.
"""
from __future__ import annotations

from typing import Optional

from ..protocol import CONVENTIONS
from .base import Observation, Policy, PolicyStats

__all__ = ["Observation", "Policy", "PolicyStats", "build_policy"]


def build_policy(kind: str, source: str, *, device: str = "auto", dtype: str = "auto",
                 coordinates: str = "qwen", temperature: float = 1.0, decoding: Optional[str] = None) -> Policy:
    """The MLLM policy ``kind`` (``hf-vlm`` or ``qwen-vl-chat``) loaded from ``source`` (folder or hub id).

    ``decoding``: ``free`` (nothing forced or constrained: the release's decoding) or ``grammar`` (the
    forced echo + the answer grammar); None = the policy's default (grammar)."""
    convention = CONVENTIONS[coordinates]
    if kind == "hf-vlm":
        from .hf_vlm import HFVLMPolicy

        return HFVLMPolicy.from_pretrained(source, device=device, dtype=dtype, convention=convention,
                                           temperature=temperature, decoding=decoding)
    if kind == "qwen-vl-chat":
        from .qwen_vl_chat import QwenVLChatPolicy

        return QwenVLChatPolicy.from_pretrained(source, device=device, dtype=dtype, convention=convention,
                                                temperature=temperature, decoding=decoding)
    raise ValueError(f"unknown policy kind {kind!r}: use hf-vlm or qwen-vl-chat")
