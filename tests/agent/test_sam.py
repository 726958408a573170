"""SamSegmenter on a tiny random segment_anything Sam, loaded through the production ``load_sam``."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from tests.tiny_models import import_segment_anything

import_segment_anything()  # through the torchvision stand-in on machines without torchvision

from segagent_backend.agent.segmenters.cache import EmbeddingCache  # noqa: E402
from segagent_backend.agent.segmenters.sam import (  # noqa: E402
    ModelLoadError, SamSegmenter, import_segment_anything as prod_import, infer_sam_architecture, load_sam,
    resolve_device,
)
from segagent_backend.agent.types import Box, Click  # noqa: E402

H, W = 96, 128  # deliberately not square: x and y must not be swapped


@pytest.fixture(scope="module")
def checkpoint(tiny_sam_checkpoint):
    return tiny_sam_checkpoint


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_sam(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def seg(model, image):
    """One segmenter with ``image`` set (the encoder runs once for all tests using it)."""
    s = SamSegmenter(model, EmbeddingCache(1 << 28))
    s.set_image(image)
    return s


def _reference(seg, clicks, box=None, prev=None):
    """segment_anything's own SamPredictor.predict on the same state: (masks, scores, low_res)."""
    coords = np.array([[c.x, c.y] for c in clicks], dtype=np.float32) if clicks else None
    labels = np.array([int(c.positive) for c in clicks]) if clicks else None
    xyxy = np.array([box.x1, box.y1, box.x2, box.y2]) if box else None
    with torch.inference_mode():
        return seg.predictor.predict(coords, labels, box=xyxy, mask_input=prev, multimask_output=True)


def test_loader_infers_the_architecture(checkpoint):
    arch = infer_sam_architecture(torch.load(checkpoint, weights_only=True))
    assert (arch.img_size, arch.patch_size, arch.embed_dim, arch.depth, arch.num_heads) == (1024, 16, 32, 2, 2)
    assert (arch.window_size, arch.global_attn_indexes, arch.prompt_dim) == (14, (1,), 64)
    assert arch.model_type is None


def test_clicks_give_a_bool_mask_of_the_original_size(seg):
    out = seg.segment([Click(30, 70), Click(100, 20, positive=False)])
    assert out.mask.shape == (H, W) and out.mask.dtype == np.bool_
    assert out.logits.shape == (1, 256, 256) and out.logits.dtype == np.float32
    assert 0.0 <= out.score <= 1.0


def test_matches_sam_predictor_with_box_and_prev_logits(seg):
    first = seg.segment([Click(30, 70)])
    clicks, box = [Click(30, 70), Click(100, 20, positive=False)], Box(10, 5, 120, 90)
    out = seg.segment(clicks, box=box, prev_logits=first.logits)
    masks, scores, low_res = _reference(seg, clicks, box, first.logits)
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(out.mask, masks[best])
    np.testing.assert_allclose(out.logits[0], low_res[best], atol=1e-5)
    assert out.score == pytest.approx(min(max(float(scores[best]), 0.0), 1.0), abs=1e-6)


def test_box_alone_works(seg):
    out = seg.segment([], box=Box(20, 10, 90, 80))
    masks, scores, _ = _reference(seg, [], Box(20, 10, 90, 80))
    assert out.mask.shape == (H, W)
    np.testing.assert_array_equal(out.mask, masks[int(np.argmax(scores))])


def test_prev_logits_round_trip_changes_the_prompt(seg):
    a = seg.segment([Click(30, 70)])
    b = seg.segment([Click(30, 70)], prev_logits=a.logits)
    assert b.logits.shape == (1, 256, 256)
    assert not np.allclose(a.logits, b.logits)  # the mask input reached the decoder
    with pytest.raises(ValueError, match="prev_logits"):
        seg.segment([Click(30, 70)], prev_logits=np.zeros((256, 256), np.float32))


def test_the_best_of_the_multimask_candidates_is_kept(seg, monkeypatch):
    decoder = seg.model.mask_decoder
    real_forward = decoder.forward
    seen = {}

    def forward(**kw):
        low_res, _ = real_forward(**kw)
        seen["multimask"] = kw["multimask_output"]
        seen["low_res"] = low_res.clone()
        return low_res, torch.tensor([[0.3, 0.1, 1.7]])  # candidate 2 is best; 1.7 must clamp to 1

    monkeypatch.setattr(decoder, "forward", forward)
    out = seg.segment([Click(30, 70)])
    assert seen["multimask"] is True and seen["low_res"].shape[1] == 3
    np.testing.assert_array_equal(out.logits, seen["low_res"][0, 2:3].numpy())
    assert out.score == 1.0


def test_the_image_encoder_runs_once_per_image(model, image):
    calls = []
    hook = model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        s = SamSegmenter(model, EmbeddingCache(1 << 28))
        s.set_image(image)
        a = s.segment([Click(30, 70)])
        other = image[::-1].copy()
        s.set_image(other)
        assert len(calls) == 2 and s.cache.misses == 2
        s.set_image(image.copy())  # same content, another array object: a cache hit
        assert len(calls) == 2 and s.cache.hits == 1
        b = s.segment([Click(30, 70)])  # the restored embedding gives the same answer
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.logits, b.logits)
    finally:
        hook.remove()


def test_missing_or_unreadable_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "sam_vit_b.pth"
    with pytest.raises(ModelLoadError, match="no such file") as e:
        load_sam(missing, device="cpu")
    assert str(missing) in str(e.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="unreadable") as e:
        load_sam(garbage, device="cpu")
    assert str(garbage) in str(e.value)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ModelLoadError, match="not a segment-anything SAM checkpoint"):
        load_sam(other, device="cpu")


def test_model_type_mismatch_is_a_clear_error(checkpoint):
    with pytest.raises(ModelLoadError, match="is not vit_b") as e:
        load_sam(checkpoint, model_type="vit_b", device="cpu")
    assert str(checkpoint) in str(e.value) and "embed_dim=32" in str(e.value)
    with pytest.raises(ModelLoadError, match="unknown SAM model_type"):
        load_sam(checkpoint, model_type="vit_x", device="cpu")


def test_device_setting():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_missing_torchvision_gives_an_actionable_import_error():
    saved = {k: v for k, v in sys.modules.items() if k == "segment_anything" or k.startswith("segment_anything.")}
    had_tv = "torchvision" in sys.modules
    tv = sys.modules.get("torchvision")
    try:
        for k in saved:
            del sys.modules[k]
        sys.modules["torchvision"] = None  # makes `import torchvision` fail like an absent package
        with pytest.raises(ImportError, match="torchvision build that matches torch"):
            prod_import()
    finally:
        for k in [k for k in sys.modules if k == "segment_anything" or k.startswith("segment_anything.")]:
            del sys.modules[k]
        sys.modules.update(saved)
        if had_tv:
            sys.modules["torchvision"] = tv
        else:
            del sys.modules["torchvision"]
