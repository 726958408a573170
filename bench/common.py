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


def ms(fn) -> float:
    """Wall time of ``fn()`` in milliseconds."""
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def time_click_modes(cached, uncached, image, repeats: int, reencode_repeats: int) -> dict:
    """The three modes of a prompted tool, timed on one image and one prompt (2 clicks + box + the previous
    logits): decoder alone (image already set), cached click (``set_image`` of a cached image + segment),
    re-encode click (``uncached``, the same model with a cache that keeps nothing). Decoder-alone and
    cached-click rounds alternate, so load changes on a shared CPU hit both alike.

    Returns ``first_encode_ms``, ``median_ms`` / ``min_ms`` per mode (and the image digest alone), and the
    ratios cached / decoder, re-encode / decoder, re-encode / cached."""
    import statistics

    from segagent_backend.agent.segmenters.cache import image_digest
    from segagent_backend.agent.types import Box, Click

    h, w = image.shape[:2]
    clicks = [Click(w * 0.4, h * 0.5), Click(w * 0.7, h * 0.3, positive=False)]
    box = Box(w * 0.2, h * 0.2, w * 0.8, h * 0.8)
    first_encode = ms(lambda: cached.set_image(image))
    prev = cached.segment(clicks[:1], box=box).logits

    def click(tool) -> None:
        tool.segment(clicks, box=box, prev_logits=prev)

    for _ in range(3):  # warm-up (allocator, first-call paths)
        click(cached)
    times: dict[str, list[float]] = {"decoder_alone": [], "cached_click": [], "image_digest": []}
    for _ in range(repeats):
        times["decoder_alone"].append(ms(lambda: click(cached)))
        times["cached_click"].append(ms(lambda: (cached.set_image(image), click(cached))))
        times["image_digest"].append(ms(lambda: image_digest(image)))
    times["reencode_click"] = [ms(lambda: (uncached.set_image(image), click(uncached)))
                               for _ in range(reencode_repeats)]
    assert uncached.cache.hits == 0 and cached.cache.misses == 1, "the cached tool must have encoded the image once"
    med = {mode: statistics.median(values) for mode, values in times.items()}
    return {"image_hw": [h, w], "first_encode_ms": first_encode, "repeats": repeats,
            "reencode_repeats": reencode_repeats, "median_ms": med,
            "min_ms": {mode: min(values) for mode, values in times.items()},
            "ratio_cached_vs_decoder": med["cached_click"] / med["decoder_alone"],
            "ratio_reencode_vs_decoder": med["reencode_click"] / med["decoder_alone"],
            "ratio_reencode_vs_cached": med["reencode_click"] / med["cached_click"]}


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


# ----- figures for bench/REPORT.md (``python -m bench.report``) ---------------------------------------

def map_jobs(work, jobs: list, workers: int) -> list:
    """``[work(j) for j in jobs]``, in order; over ``workers`` spawned processes when more than one (spawn:
    no forked torch/OpenCV state; ``work`` must be a module-level function)."""
    if workers <= 1:
        return [work(j) for j in jobs]
    from multiprocessing import get_context

    with get_context("spawn").Pool(workers) as pool:
        return pool.map(work, jobs, chunksize=1)


def results_dir() -> Path:
    """Where ``record`` writes: $SEGAGENT_BENCH_RESULTS, else bench/results."""
    import os

    return Path(os.environ.get("SEGAGENT_BENCH_RESULTS") or REPO / "bench" / "results")


def git_commit(repo: Path = REPO) -> Optional[str]:
    """``git rev-parse --short HEAD`` of ``repo``, None without git or a repository."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def machine() -> dict:
    """CPU model (/proc/cpuinfo), cores, Python; torch's version, intra-op threads and the GPU where the bench
    loaded torch (what it set them to: call this at the end of the run)."""
    import os
    import platform
    import sys

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": None, "torch_threads": None, "gpu": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        try:
            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        except Exception:  # a broken CUDA setup must not lose the figures
            pass
    return info


def record(bench: str, figures: dict, setup: Optional[dict] = None, plot: Optional[dict] = None,
           extra: Optional[dict] = None) -> Path:
    """Write ``<results_dir()>/<bench>.json`` for bench/REPORT.md: the figures of this run (ratios side by side,
    as the bench printed them), the date, the machine and the commit.

    ``figures``: name -> a number (or text), or a table: a list of row dicts, or row name -> row dict.
    ``setup``: the run's parameters (sizes, repeats). ``plot``: a curve the report draws as a PNG,
    ``{"title", "x", "y", "series": {name: [y, ...] (x = 1, 2, ..) or [[x, y], ...]}}``. ``extra``: the bench's own
    detailed figures, kept at the top level of the file (for a bench whose results file is already this path)."""
    import datetime
    import json

    payload = dict(extra or {})
    payload.update(bench=bench, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   commit=git_commit(), machine=machine(), setup=setup or {}, figures=figures)
    if plot is not None:
        payload["plot"] = plot
    path = results_dir() / f"{bench}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"recorded for bench/REPORT.md: {path}")
    return path
