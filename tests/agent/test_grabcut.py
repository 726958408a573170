"""The GrabCut tool on synthetic images made here, and on a few images of the real GrabCut set."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from segagent_backend.agent.metrics import iou
from segagent_backend.agent.segmenters.cache import EmbeddingCache
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Box, Click

REPO = Path(__file__).resolve().parents[2]


def _scene(width: int = 200, height: int = 150, seed: int = 0):
    """Noisy green background with a red disk (object) and a blue square (distractor).

    Returns (image (H, W, 3) uint8 RGB, disk (H, W) bool, square (H, W) bool).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    disk = (xx - 70) ** 2 + (yy - 75) ** 2 <= 35**2
    square = (xx >= 140) & (xx < 180) & (yy >= 50) & (yy < 100)
    image = np.empty((height, width, 3), np.float64)
    image[...] = (60, 120, 70)
    image[disk] = (200, 40, 40)
    image[square] = (40, 60, 200)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), disk, square


@pytest.fixture()
def scene():
    return _scene()


def test_positive_click_segments_the_disk(scene):
    image, disk, _ = scene
    seg = GrabCutSegmenter()
    seg.set_image(image)
    out = seg.segment([Click(70, 75)])
    assert out.mask.shape == disk.shape and out.mask.dtype == bool
    assert iou(out.mask, disk) > 0.9
    assert 0.0 <= out.score <= 1.0


def test_no_prompt_gives_an_empty_mask(scene):
    image, disk, _ = scene
    seg = GrabCutSegmenter()
    seg.set_image(image)
    out = seg.segment([])
    assert out.mask.shape == disk.shape and out.mask.dtype == bool and not out.mask.any()


def test_negative_click_removes_a_wrongly_included_region(scene):
    image, disk, square = scene
    seg = GrabCutSegmenter()
    seg.set_image(image)
    wrong = (disk | square).astype(np.uint8)  # a previous mask that also covers the square
    out = seg.segment([Click(70, 75), Click(160, 75, False)], prev_logits=wrong)
    assert not out.mask[square].any() or out.mask[square].mean() < 0.05
    assert iou(out.mask, disk) > 0.9


def test_positive_click_only_adds(scene):
    image, disk, square = scene
    seg = GrabCutSegmenter()
    seg.set_image(image)
    first = seg.segment([Click(70, 75)])
    second = seg.segment([Click(70, 75), Click(160, 75)], prev_logits=first.logits)
    assert np.all(second.mask[first.mask])  # nothing the first click gave is taken away
    assert second.mask[square].mean() > 0.9


def test_first_click_gets_the_large_seed_disk_only_in_adaptive_mode(scene):
    image, _, _ = scene  # 200 x 150: the working image is the image itself
    adaptive = GrabCutSegmenter(object_radius=0.1, first_radius=0.3)
    adaptive.set_image(image)
    assert adaptive._seed_radius(70, 75, first=True) == int(0.3 * 150)
    assert adaptive._seed_radius(70, 75) <= int(0.1 * 150)  # later disks: by edge distance, capped
    fixed = GrabCutSegmenter(object_radius=0.1, first_radius=0.3, adaptive_seed=False)
    fixed.set_image(image)
    assert fixed._seed_radius(70, 75, first=True) == fixed._seed_radius(70, 75) == int(0.1 * 150)


def test_box_only(scene):
    image, disk, _ = scene
    seg = GrabCutSegmenter()
    seg.set_image(image)
    out = seg.segment([], box=Box(25, 30, 115, 120))
    assert out.mask.shape == disk.shape
    assert iou(out.mask, disk) > 0.9


def test_deterministic(scene):
    image, _, _ = scene
    clicks = [Click(70, 75), Click(160, 75)]
    runs = []
    for _ in range(2):
        seg = GrabCutSegmenter(EmbeddingCache(2**24))
        seg.set_image(image)
        a = seg.segment(clicks[:1])
        b = seg.segment(clicks, prev_logits=a.logits)
        runs.append((a.mask, b.mask, b.score))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]


def test_large_image_runs_at_working_size_and_returns_the_original_size():
    image, disk, _ = _scene(800, 600)
    seg = GrabCutSegmenter(max_side=256)
    seg.set_image(image)
    out = seg.segment([Click(70, 75)])
    assert out.mask.shape == (600, 800)
    assert out.logits is not None and max(out.logits.shape) == 256
    assert iou(out.mask, disk) > 0.85


def test_embedding_cache_is_hit_on_the_same_content(scene):
    image, _, _ = scene
    cache = EmbeddingCache(2**24)
    seg = GrabCutSegmenter(cache)
    seg.set_image(image)
    assert cache.misses == 1 and cache.hits == 0
    seg.set_image(image.copy())  # same content, another array
    assert cache.hits == 1 and len(cache) == 1
    other = GrabCutSegmenter(cache, max_side=64)  # another working size is another embedding
    other.set_image(image)
    assert len(cache) == 2


# --- the real GrabCut set ---------------------------------------------------------------------------

FAST_IMAGES = ("106024", "388016", "music")  # small, and monotone in the full bench run


def _grabcut_dir() -> Path:
    env = os.environ.get("SEGAGENT_GRABCUT_DIR")
    return Path(env) if env else (REPO / ".." / "shared" / "datasets" / "grabcut").resolve()


@pytest.mark.parametrize("name", FAST_IMAGES)
def test_real_images_reach_a_good_iou_monotonically(name):
    root = _grabcut_dir()
    if not (root / "manifest.json").is_file():
        pytest.skip(f"GrabCut dataset not found at {root} (set SEGAGENT_GRABCUT_DIR)")
    from trainer.datasets import load_grabcut
    from trainer.evaluation import simulate_noc

    sample = load_grabcut(root, names=[name])[0]
    ious = simulate_noc(GrabCutSegmenter(), sample, max_clicks=5)
    assert len(ious) == 5
    assert max(ious) >= 0.85, ious
    assert all(b >= a - 1e-9 for a, b in zip(ious, ious[1:])), ious
