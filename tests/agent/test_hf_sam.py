"""HFSamSegmenter on a tiny random transformers SamModel, loaded through the production ``load_hf_sam``."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from segagent_backend.agent.segmenters.cache import EmbeddingCache
from segagent_backend.agent.segmenters.hf_sam import HFSamSegmenter, load_hf_sam
from segagent_backend.agent.segmenters.sam import ModelLoadError
from segagent_backend.agent.types import Box, Click

H, W = 96, 128  # deliberately not square: x and y must not be swapped


@pytest.fixture(scope="module")
def folder(tiny_hf_sam):
    return tiny_hf_sam


@pytest.fixture(scope="module")
def loaded(folder):
    return load_hf_sam(folder, device="cpu")


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def seg(loaded, image):
    """One segmenter with ``image`` set (the vision encoder runs once for all tests using it)."""
    s = HFSamSegmenter(*loaded, cache=EmbeddingCache(1 << 28))
    s.set_image(image)
    return s


def _reference(seg, image, clicks, box=None):
    """The stock transformers path (processor on image + prompts, full model, post_process_masks)."""
    kw = {}
    if clicks:
        kw["input_points"] = [[[[c.x, c.y] for c in clicks]]]
        kw["input_labels"] = [[[int(c.positive) for c in clicks]]]
    if box:
        kw["input_boxes"] = [[[box.x1, box.y1, box.x2, box.y2]]]
    inputs = seg.processor(images=image, return_tensors="pt", **kw)
    with torch.inference_mode():
        out = seg.model(**inputs, multimask_output=True)
    masks = seg.processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    scores = out.iou_scores[0, 0]
    best = int(scores.argmax())
    return masks[0][0, best].numpy(), float(scores[best]), out.pred_masks[0, 0, best].numpy()


def test_clicks_give_a_bool_mask_of_the_original_size(seg):
    out = seg.segment([Click(30, 70), Click(100, 20, positive=False)])
    assert out.mask.shape == (H, W) and out.mask.dtype == np.bool_
    assert out.logits.shape == (1, 256, 256) and out.logits.dtype == np.float32
    assert 0.0 <= out.score <= 1.0


@pytest.mark.parametrize("with_box", [False, True])
def test_matches_the_stock_processor_and_model_path(seg, image, with_box):
    clicks = [Click(30, 70), Click(100, 20, positive=False)]
    box = Box(10, 5, 120, 90) if with_box else None
    out = seg.segment(clicks, box=box)
    mask, score, logits = _reference(seg, image, clicks, box)
    np.testing.assert_array_equal(out.mask, mask)
    np.testing.assert_allclose(out.logits[0], logits, atol=1e-4)
    assert out.score == pytest.approx(min(max(score, 0.0), 1.0), abs=1e-5)


def test_box_alone_works(seg, image):
    out = seg.segment([], box=Box(20, 10, 90, 80))
    mask, _, _ = _reference(seg, image, [], Box(20, 10, 90, 80))
    np.testing.assert_array_equal(out.mask, mask)


def test_prev_logits_round_trip(seg):
    a = seg.segment([Click(30, 70)])
    b = seg.segment([Click(30, 70)], prev_logits=a.logits)
    assert b.logits.shape == (1, 256, 256) and b.mask.shape == (H, W)
    assert not np.allclose(a.logits, b.logits)  # the mask input reached the decoder
    with pytest.raises(ValueError, match="prev_logits"):
        seg.segment([Click(30, 70)], prev_logits=np.zeros((1, 64, 64), np.float32))


def test_the_best_of_the_multimask_candidates_is_kept(seg, monkeypatch):
    decoder = seg.model.mask_decoder
    real_forward = decoder.forward
    seen = {}

    def forward(*args, **kw):
        masks, _ = real_forward(*args, **kw)
        seen["multimask"] = kw["multimask_output"]
        seen["masks"] = masks.clone()
        return masks, torch.tensor([[[0.2, -0.5, 0.4]]])  # candidate 2 is best

    monkeypatch.setattr(decoder, "forward", forward)
    out = seg.segment([Click(30, 70)])
    assert seen["multimask"] is True and seen["masks"].shape[2] == 3
    np.testing.assert_array_equal(out.logits, seen["masks"][0, 0, 2:3].numpy())
    assert out.score == pytest.approx(0.4)


def test_the_vision_encoder_runs_once_per_image(loaded, image):
    model, processor = loaded
    calls = []
    hook = model.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        s = HFSamSegmenter(model, processor, cache=EmbeddingCache(1 << 28))
        s.set_image(image)
        a = s.segment([Click(30, 70)])
        s.set_image(image[:, ::-1].copy())
        assert len(calls) == 2 and s.cache.misses == 2
        s.set_image(image.copy())  # same content, another array object: a cache hit
        assert len(calls) == 2 and s.cache.hits == 1
        b = s.segment([Click(30, 70)])
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.logits, b.logits)
    finally:
        hook.remove()


def test_from_pretrained_keys_the_cache_by_folder(folder):
    s = HFSamSegmenter.from_pretrained(folder, device="cpu")
    assert str(folder.resolve()) in s.cache_namespace


def test_missing_or_broken_model_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no such folder") as e:
        load_hf_sam(missing, device="cpu")
    assert str(missing) in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_hf_sam(empty, device="cpu")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=str(broken)):
        load_hf_sam(broken, device="cpu")


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="segagent-test/definitely-not-a-model"):
        load_hf_sam("segagent-test/definitely-not-a-model", device="cpu")
