"""What several benchmarks share: finding the GrabCut set, and timing calls inside code under test."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from trainer.datasets import default_grabcut_dir

REPO = Path(__file__).resolve().parent.parent


def grabcut_root(data: Optional[Path]) -> Optional[Path]:
    """``data``, else $SEGAGENT_GRABCUT_DIR, else ../shared/datasets/grabcut; None (after saying why) when absent."""
    root = data if data is not None else default_grabcut_dir(REPO)
    if not (root / "manifest.json").is_file():
        print(f"SKIP: GrabCut dataset not found at {root} (pass --data or set SEGAGENT_GRABCUT_DIR)")
        return None
    return root


class Timed:
    """Wraps a callable and adds its wall time to ``counter[key]``; its other attributes pass through
    (a wrapped processor still has its tokenizer and chat template)."""

    def __init__(self, fn, counter: dict, key: str = "model"):
        self.fn, self.counter, self.key = fn, counter, key

    def __getattr__(self, name):
        return getattr(self.fn, name)

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.counter[self.key] += time.perf_counter() - started
