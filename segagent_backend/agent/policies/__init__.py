"""Policies: who decides the next click (an MLLM, the standard simulator, or the annotator).

The MLLM kinds are named in ONE table (``POLICIES``); a ``PolicySpec`` says which one to load and how it
runs, and crosses from the service's wiring to the trainer as it is. Each builder imports only its kind.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

from ..choices import pick
from ..protocol import SEGAGENT_QWEN, CoordinateConvention
from .base import Observation, Policy, PolicyStats
from .decoding import DECODINGS

__all__ = ["DECODINGS", "POLICIES", "Observation", "Policy", "PolicyKind", "PolicySpec", "PolicyStats",
           "build_policy", "load_policy"]

@dataclass(frozen=True)
class PolicySpec:
    """The policy of ``kind`` (a key of ``POLICIES``) from ``checkpoint`` (folder or hub id), writing clicks in
    ``convention``, on ``device`` / ``dtype``, sampling tree-search candidates at ``temperature``;
    ``decoding``: a key of ``DECODINGS``, None = the policy's default (grammar)."""

    kind: str
    checkpoint: str
    convention: CoordinateConvention = SEGAGENT_QWEN
    device: str = "auto"
    dtype: str = "auto"
    temperature: float = 1.0
    decoding: Optional[str] = None

    def at(self, checkpoint) -> "PolicySpec":
        """The same policy loaded from another folder (a trained round, a registered version)."""
        return replace(self, checkpoint=str(checkpoint))


@dataclass(frozen=True)
class PolicyKind:
    """One kind: its meaning, its builder, and the protocol it runs under unless told otherwise."""

    help: str
    build: Callable[[PolicySpec], Policy]
    protocol: str


def _loaded(cls, spec: PolicySpec) -> Policy:
    return cls.from_pretrained(spec.checkpoint, device=spec.device, dtype=spec.dtype, convention=spec.convention,
                               temperature=spec.temperature, decoding=spec.decoding)


def _hf_vlm(spec: PolicySpec) -> Policy:
    from .hf_vlm import HFVLMPolicy

    return _loaded(HFVLMPolicy, spec)


def _qwen_vl_chat(spec: PolicySpec) -> Policy:
    from .qwen_vl_chat import QwenVLChatPolicy

    return _loaded(QwenVLChatPolicy, spec)


POLICIES: dict[str, PolicyKind] = {
    "hf-vlm": PolicyKind("transformers chat VLMs: Qwen2-VL, Qwen2.5-VL, LLaVA", _hf_vlm, "extended"),
    "qwen-vl-chat": PolicyKind("the released SegAgent-Qwen, run natively", _qwen_vl_chat, "release"),
}


def load_policy(spec: PolicySpec) -> Policy:
    """The policy ``spec`` names, loaded."""
    return pick(POLICIES, spec.kind, "policy kind").build(spec)


def build_policy(kind: str, checkpoint, **options) -> Policy:
    """``load_policy(PolicySpec(kind, checkpoint, **options))``."""
    return load_policy(PolicySpec(kind, str(checkpoint), **options))
