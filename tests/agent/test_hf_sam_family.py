"""The ``hf-sam`` tool over the transformers SAM family: tiny random folders of every model type, loaded
through the production loader (``wiring.segmenter_from_settings``); clicks, box and mask input through
each; the embedding cache; our preprocessing against the stock processors wherever those run."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from segagent_backend.agent.loading import ModelLoadError
from segagent_backend.agent.segmenters.cache import EmbeddingCache
from segagent_backend.agent.segmenters.hf_sam import HFSamSegmenter, load_hf_sam
from segagent_backend.agent.segmenters.hf_sam_models import SUPPORTED_MODEL_TYPES, decode
from segagent_backend.agent.segmenters.hf_sam_preprocess import OwnPreprocessor, PreprocessSpec
from tests.tiny_sam_family import TINY_MODEL_TYPES, make_tiny_family
from segagent_backend.agent.types import Box, Click
from segagent_backend.settings import Settings
from segagent_backend.wiring import segmenter_from_settings

H, W = 96, 128  # deliberately not square: x and y must not be swapped
CLASSES = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model", "sam3_tracker": "Sam3TrackerModel"}
SIDES = {"sam3_tracker": 224}  # patch 14; the others 256 (patch 16)


@pytest.fixture(scope="session")
def family_folders(tmp_path_factory) -> dict:
    """One tiny random folder per model type (built once per session)."""
    root = tmp_path_factory.mktemp("tiny-hf-sam-family")
    torch.set_num_threads(1)  # tiny models on a shared 2-core CPU: threads only wait on each other
    return {t: make_tiny_family(root / t, t, side=SIDES.get(t, 256)) for t in TINY_MODEL_TYPES}


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def segmenters(family_folders, image) -> dict:
    """Each model type loaded as the service loads SEGAGENT_SEGMENTER=hf-sam, with ``image`` set."""
    out = {}
    for model_type, folder in family_folders.items():
        settings = Settings.from_env({"SEGAGENT_SEGMENTER": "hf-sam", "SEGAGENT_SAM_MODEL": str(folder),
                                      "DEVICE": "cpu"})
        seg = segmenter_from_settings(settings, EmbeddingCache(1 << 28))
        seg.set_image(image)
        out[model_type] = seg
    return out


@pytest.fixture(params=TINY_MODEL_TYPES)
def seg(request, segmenters) -> HFSamSegmenter:
    return segmenters[request.param]


def test_every_model_type_is_supported_or_left_out_with_a_reason():
    assert set(TINY_MODEL_TYPES) | {"edgetam"} == set(SUPPORTED_MODEL_TYPES)


def test_model_type_picks_the_class_and_the_preprocessing(seg):
    assert type(seg.model).__name__ == CLASSES[seg.family.model_type]
    stock = seg.family.model_type in ("sam", "sam_hq")
    assert (seg.processor is not None) == stock  # the stock processor where it runs without torchvision


def test_clicks_box_and_mask_input_through_each(seg):
    side = seg.mask_input_size
    a = seg.segment([Click(30, 70), Click(100, 20, positive=False)])
    assert a.mask.shape == (H, W) and a.mask.dtype == np.bool_
    assert a.logits.shape == (1, *side) and a.logits.dtype == np.float32
    assert 0.0 <= a.score <= 1.0
    b = seg.segment([Click(30, 70), Click(100, 20, positive=False)], box=Box(10, 5, 120, 90), prev_logits=a.logits)
    assert b.mask.shape == (H, W) and b.logits.shape == (1, *side)
    assert not np.allclose(a.logits, b.logits)  # box and mask input reached the decoder
    c = seg.segment([], box=Box(20, 10, 90, 80))
    assert c.mask.shape == (H, W)
    d = seg.segment([Click(30, 70), Click(100, 20, positive=False)], prev_logits=a.logits)
    assert not np.allclose(d.logits, seg.segment([Click(30, 70), Click(100, 20, positive=False)]).logits)
    with pytest.raises(ValueError, match="prev_logits"):
        seg.segment([Click(30, 70)], prev_logits=np.zeros((1, 8, 8), np.float32))


def _full_forward(seg, image, clicks, box, prev):
    """The model's own one-call path: pixel values (not the cached embedding) + prompts in the input frame
    computed here from the processors' rule (x * w'/W, y * h'/H)."""
    prepared = seg.preprocessor(image)
    (rh, rw) = prepared.input_size
    sx, sy = rw / W, rh / H
    kw = dict(input_points=torch.tensor([[[[c.x * sx, c.y * sy] for c in clicks]]], dtype=torch.float32),
              input_labels=torch.tensor([[[int(c.positive) for c in clicks]]]),
              input_boxes=torch.tensor([[[box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy]]], dtype=torch.float32),
              input_masks=torch.as_tensor(prev)[None])
    with torch.inference_mode():
        out = seg.model(pixel_values=prepared.pixel_values, multimask_output=True, **kw)
    return out.pred_masks[0, 0].numpy(), out.iou_scores[0, 0].numpy()


def test_the_cached_path_equals_the_full_forward_and_keeps_the_best_candidate(seg, image):
    clicks, box = [Click(30, 70), Click(100, 20, positive=False)], Box(10, 5, 120, 90)
    prev = seg.segment(clicks[:1]).logits
    out = seg.segment(clicks, box=box, prev_logits=prev)
    masks, ious = _full_forward(seg, image, clicks, box, prev)
    # a tiny random decoder's predicted IoUs can be ~1e-4 apart: candidates within the paths' tolerance of the
    # best are a tie either path may break its own way, so the kept logits are one of those candidates'
    best = [i for i in range(len(ious)) if ious[i] >= ious.max() - 1e-5]
    assert any(np.allclose(out.logits[0], masks[i], atol=1e-4) for i in best), (ious, best)
    assert out.score == pytest.approx(min(max(float(ious.max()), 0.0), 1.0), abs=1e-5)


def test_the_stock_processor_path_matches_for_sam_and_sam_hq(segmenters, image):
    """Stock processor on image + prompts, full model, stock post-processing: the same mask."""
    for model_type in ("sam", "sam_hq"):
        seg = segmenters[model_type]
        clicks = [Click(30, 70), Click(100, 20, positive=False)]
        out = seg.segment(clicks)
        inputs = seg.processor(images=image, input_points=[[[[c.x, c.y] for c in clicks]]],
                               input_labels=[[[int(c.positive) for c in clicks]]], return_tensors="pt")
        with torch.inference_mode():
            ref = seg.model(**inputs, multimask_output=True)
        best = int(ref.iou_scores[0, 0].argmax())
        masks = seg.processor.post_process_masks(ref.pred_masks, inputs["original_sizes"],
                                                 inputs["reshaped_input_sizes"])
        np.testing.assert_array_equal(out.mask, masks[0][0, best].numpy())


def test_the_vision_encoder_runs_once_per_image(seg, image):
    model = seg.model
    calls = []
    hook = model.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        s = HFSamSegmenter(model, seg.preprocessor, cache=EmbeddingCache(1 << 28))
        s.set_image(image)
        a = s.segment([Click(30, 70)])
        assert len(calls) == 1 and s.cache.misses == 1
        s.set_image(image.copy())  # the same content, another array: a cache hit, no encoder call
        b = s.segment([Click(30, 70), Click(100, 20, positive=False)], prev_logits=a.logits)
        assert len(calls) == 1 and s.cache.hits == 1
        assert s.cache.nbytes == s._embedding.nbytes > 0
        np.testing.assert_array_equal(s.segment([Click(30, 70)]).logits, a.logits)
        assert b.mask.shape == (H, W)
    finally:
        hook.remove()


def test_the_best_candidate_is_the_one_with_the_highest_predicted_iou(seg, monkeypatch):
    import segagent_backend.agent.segmenters.hf_sam as hf_sam

    seen = {}

    def fake(*args):
        masks, _ = decode(*args)
        seen["masks"] = masks.clone()
        return masks, torch.tensor([0.2, -0.5, 0.4])  # candidate 2 is best

    monkeypatch.setattr(hf_sam, "decode", fake)
    out = seg.segment([Click(30, 70)])
    assert seen["masks"].shape[1] == 3  # multimask output
    np.testing.assert_array_equal(out.logits, seen["masks"][0, 2:3].numpy())
    assert out.score == pytest.approx(0.4)


@pytest.mark.parametrize("hw", [(96, 128), (300, 200), (37, 500), (256, 256), (1, 3)])
def test_own_preprocessing_equals_the_stock_sam_processor(segmenters, hw):
    rng = np.random.default_rng(hw[0])
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    for model_type in ("sam", "sam_hq"):
        stock = segmenters[model_type].preprocessor
        own = OwnPreprocessor(stock.spec)
        a, b = own(image), stock(image)
        assert a.original_size == b.original_size and a.input_size == b.input_size
        torch.testing.assert_close(a.pixel_values, b.pixel_values, atol=1e-5, rtol=1e-5)
        logits = torch.randn(1, 1, 64, 64)
        np.testing.assert_array_equal(own.upscale(logits, a.original_size, a.input_size),
                                      stock.upscale(logits, b.original_size, b.input_size))


@pytest.mark.parametrize("model_type", ["sam2", "sam3_tracker"])
def test_own_preprocessing_equals_the_stock_square_processor(family_folders, segmenters, model_type):
    """Only where torchvision is installed (the stock SAM 2 / SAM 3 processors import it)."""
    pytest.importorskip("torchvision")
    from transformers import AutoImageProcessor

    stock = AutoImageProcessor.from_pretrained(family_folders[model_type])
    own = segmenters[model_type].preprocessor
    for hw in [(96, 128), (300, 200), (37, 500)]:
        image = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
        ref = stock(images=image, input_data_format="channels_last", return_tensors="pt")
        torch.testing.assert_close(own(image).pixel_values, ref["pixel_values"], atol=1e-5, rtol=1e-5)


def test_clicks_and_boxes_reach_the_square_frame_as_the_stock_processors_put_them(segmenters):
    """The stock processors' coordinate rule runs without torchvision: ours must agree (x with W, y with H)."""
    from transformers.models.sam2.processing_sam2 import Sam2Processor
    from transformers.models.sam3_tracker.processing_sam3_tracker import Sam3TrackerProcessor

    xy = np.array([[30.0, 70.0], [127.0, 0.0], [0.0, 95.0]])
    box = np.array([10.0, 5.0, 120.0, 90.0])
    for model_type, stock in (("sam2", Sam2Processor), ("sam3_tracker", Sam3TrackerProcessor)):
        pre = segmenters[model_type].preprocessor
        side = pre.spec.size[0]
        prepared = pre(np.zeros((H, W, 3), np.uint8))
        ours = pre.to_input_frame(xy, prepared.original_size, prepared.input_size)
        ref = stock._normalize_coordinates(None, side, torch.tensor(xy), (H, W))
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
        ours_box = pre.to_input_frame(box.reshape(2, 2), prepared.original_size, prepared.input_size).reshape(4)
        ref_box = stock._normalize_coordinates(None, side, torch.tensor(box)[None], (H, W), is_bounding_box=True)
        np.testing.assert_allclose(ours_box, ref_box[0].numpy(), rtol=1e-6)


def test_square_spec_is_read_from_the_processor_config(family_folders):
    config = json.loads((family_folders["sam3_tracker"] / "preprocessor_config.json").read_text())
    spec = PreprocessSpec.from_config(config, square=True, side=1008)
    assert spec.square and spec.size == (224, 224) and spec.pad_size is None and spec.mean == (0.5, 0.5, 0.5)
    prepared = OwnPreprocessor(spec)(np.zeros((H, W, 3), np.uint8))
    assert prepared.pixel_values.shape == (1, 3, 224, 224) and prepared.input_size == (224, 224)
    assert torch.allclose(prepared.pixel_values, torch.tensor(-1.0))  # (0 - 0.5) / 0.5
    with pytest.raises(ValueError, match="resample"):
        PreprocessSpec.from_config(dict(config, resample=3), square=True, side=1008)


def test_from_pretrained_keys_the_cache_by_folder(segmenters, family_folders):
    for model_type, folder in family_folders.items():
        assert str(folder.resolve()) in segmenters[model_type].cache_namespace


def test_an_unknown_model_type_names_the_setting_and_the_supported_types(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError) as e:
        load_hf_sam(folder, device="cpu")
    message = str(e.value)
    assert "SEGAGENT_SAM_MODEL" in message and "'bert'" in message and str(folder) in message
    assert all(t in message for t in SUPPORTED_MODEL_TYPES)
    (folder / "config.json").write_text(json.dumps({"model_type": "sam3"}))
    with pytest.raises(ModelLoadError, match="sam3_tracker"):
        load_hf_sam(folder, device="cpu")


def test_edgetam_without_timm_is_a_clear_error(tmp_path):
    import transformers

    if transformers.utils.is_timm_available():
        pytest.skip("timm is installed: EdgeTAM loads like SAM 2")
    folder = tmp_path / "edgetam"
    transformers.EdgeTamConfig().save_pretrained(folder)
    with pytest.raises(ModelLoadError, match="timm") as e:
        load_hf_sam(folder, device="cpu")
    assert "SEGAGENT_SAM_MODEL" in str(e.value) and "edgetam" in str(e.value)
