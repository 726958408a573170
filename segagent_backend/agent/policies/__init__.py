"""Policies: who decides the next click (an MLLM, the standard simulator, or the annotator)."""
from .base import Observation, Policy, PolicyStats

__all__ = ["Observation", "Policy", "PolicyStats"]
