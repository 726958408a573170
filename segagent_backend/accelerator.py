"""The accelerator's memory, seen without importing torch (a process that never used torch holds none)."""
from __future__ import annotations

import sys


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (checked by name: this module must not import torch)."""
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def free_accelerator_memory() -> None:
    """Give the CUDA allocator's cached blocks back (after a model was dropped, or an out-of-memory error)."""
    torch = sys.modules.get("torch")  # only a process that already uses torch can hold CUDA memory
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
