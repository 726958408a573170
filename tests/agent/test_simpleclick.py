"""SimpleClick, native (segmenters/simpleclick): the checkpoint reader (published files as they are, nothing of
their pickled code run), the click encoding, the zoom-in rules and the tool behind the Segmenter interface,
on tiny random models. The comparison with the original code is tests/agent/test_simpleclick_oracle.py."""
from __future__ import annotations

import os
import pickle
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segagent_backend.agent.loading import ModelLoadError
from segagent_backend.agent.segmenters import EmbeddingCache, build_segmenter
from segagent_backend.agent.segmenters.simpleclick import (ClickState, SimpleClickConfig, SimpleClickModel,
                                                           SimpleClickSegmenter, load_simpleclick, read_checkpoint)
from segagent_backend.agent.segmenters.simpleclick.checkpoint import Inert, release_config, save_simpleclick
from segagent_backend.agent.segmenters.simpleclick.clicks import click_maps
from segagent_backend.agent.segmenters.simpleclick.inference import box_iou, next_roi, object_roi
from segagent_backend.agent.types import Box, Click
from segagent_backend.settings import Settings, SettingsError

TINY = SimpleClickConfig(img_size=(224, 224), patch_size=(16, 16), embed_dim=32, depth=8, num_heads=2, mlp_ratio=2.0,
                         neck_out_dims=(8, 16, 32, 64), head_in_channels=(8, 16, 32, 64), head_channels=16)


def tiny_model(cfg: SimpleClickConfig = TINY, seed: int = 0) -> SimpleClickModel:
    torch.manual_seed(seed)
    model = SimpleClickModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


# ----- the release's checkpoint layout, made without the release's code -----------------------------------
LOSS_MODULE = "isegm.model.modeling.transformer_helper.cross_entropy_loss"


def fake_training_code():
    """Modules named as SimpleClick's, holding a loss module class and a loss function: a checkpoint pickled
    with them carries the same kind of names the published files carry."""
    mods = {}
    for name in ("isegm", "isegm.model", "isegm.model.modeling", "isegm.model.modeling.transformer_helper", LOSS_MODULE):
        mods[name] = types.ModuleType(name)

    def cross_entropy(*args, **kwargs):  # pragma: no cover - never called
        raise AssertionError("a pickled function must not run")

    class CrossEntropyLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.use_sigmoid, self.use_mask, self.reduction, self.loss_weight = False, False, "mean", 1.0
            self.class_weight = None
            self.cls_criterion = cross_entropy

        def __setstate__(self, state):  # pragma: no cover - must never run when loading
            raise AssertionError("the original class must not be rebuilt")

    for obj in (cross_entropy, CrossEntropyLoss):
        obj.__module__, obj.__qualname__ = LOSS_MODULE, obj.__name__
        setattr(mods[LOSS_MODULE], obj.__name__, obj)
    return mods, CrossEntropyLoss


def save_like_the_release(model: SimpleClickModel, path: Path) -> Path:
    """``{'config': model._config, 'state_dict': ...}`` as the release's training writes it: the head's
    ``loss_decode`` a pickled module object of the training code, the classifier parts of the ViT included."""
    mods, loss_cls = fake_training_code()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        config = release_config(model.cfg)
        config["params"]["head_params"]["value"]["loss_decode"] = loss_cls()
        sd = dict(model.state_dict())
        dim = model.cfg.embed_dim
        sd.update({"backbone.cls_token": torch.zeros(1, 1, dim), "backbone.fc_norm.weight": torch.ones(dim),
                   "backbone.fc_norm.bias": torch.zeros(dim), "backbone.head.weight": torch.zeros(1000, dim),
                   "backbone.head.bias": torch.zeros(1000)})
        torch.save({"config": config, "state_dict": sd}, path)
    finally:
        for k, v in saved.items():  # the fake training code is gone again: nothing can import it
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_like_the_release(tiny_model(), tmp_path_factory.mktemp("sc") / "tiny_release.pth")


def test_a_release_checkpoint_is_refused_by_plain_weights_only_loading(ckpt):
    with pytest.raises(pickle.UnpicklingError, match="cross_entropy_loss"):
        torch.load(ckpt, weights_only=True)


def test_a_release_checkpoint_loads_through_the_production_loader(tmp_path):
    model = tiny_model()
    path = save_like_the_release(model, tmp_path / "m.pth")
    assert LOSS_MODULE not in sys.modules
    loaded = load_simpleclick(path)
    assert loaded.cfg == TINY
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # the loss object and its function are inert placeholders, never the training code's
    loss = read_checkpoint(path)["config"]["params"]["head_params"]["value"]["loss_decode"]
    assert isinstance(loss, Inert) and loss.pickled_name == f"{LOSS_MODULE}.CrossEntropyLoss"
    assert isinstance(loss.state["cls_criterion"], type) and issubclass(loss.state["cls_criterion"], Inert)
    assert LOSS_MODULE not in sys.modules


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_a_checkpoint_pickling_code_is_refused_and_nothing_runs(tmp_path, payload, legacy):
    marker = tmp_path / "pwned"
    evil = _System(marker) if payload == "os.system" else _Eval()
    path = tmp_path / "evil.pth"
    config = release_config(TINY)
    config["params"]["head_params"]["value"]["loss_decode"] = evil
    torch.save({"config": config, "state_dict": tiny_model().state_dict()}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ModelLoadError, match="system|eval") as err:
        load_simpleclick(path)
    assert "not loaded" in str(err.value) or "refused" in str(err.value)
    assert not marker.exists()


def test_a_name_of_the_training_code_never_runs_even_when_called_by_the_pickle(tmp_path):
    """An ``isegm.*`` name pickled as a call (REDUCE) builds a placeholder holding the arguments."""
    mods, _ = fake_training_code()

    def boom(*args):  # pragma: no cover
        raise AssertionError("ran")

    boom.__module__, boom.__qualname__ = LOSS_MODULE, "boom"

    class Call:
        def __reduce__(self):
            return (boom, ("rm -rf /",))

    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    setattr(mods[LOSS_MODULE], "boom", boom)
    try:
        torch.save({"x": Call()}, tmp_path / "c.pth")
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)
    got = read_checkpoint(tmp_path / "c.pth")["x"]
    assert isinstance(got, Inert) and got.args == ("rm -rf /",)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_simpleclick(tmp_path / "missing.pth")
    torch.save({"state_dict": {}}, tmp_path / "plain.pth")
    with pytest.raises(ModelLoadError, match="not a SimpleClick checkpoint"):
        load_simpleclick(tmp_path / "plain.pth")
    config = release_config(TINY)
    config["class"] = "isegm.model.is_hrnet_model.HRNetModel"
    torch.save({"config": config, "state_dict": {}}, tmp_path / "hrnet.pth")
    with pytest.raises(ModelLoadError, match="not a plain-ViT"):
        load_simpleclick(tmp_path / "hrnet.pth")
    sd = tiny_model().state_dict()
    sd.pop("head.conv_seg.bias")
    torch.save({"config": release_config(TINY), "state_dict": sd}, tmp_path / "short.pth")
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_simpleclick(tmp_path / "short.pth")


# ----- architecture ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,depth,heads,patch,global_blocks,name", [
    (768, 12, 12, 16, (5, 11), "vit_base"),
    (1024, 24, 16, 16, (5, 11, 17, 23), "vit_large"),
    (1280, 32, 16, 14, (7, 15, 23, 31), "vit_huge"),
])
def test_the_published_variants(dim, depth, heads, patch, global_blocks, name):
    cfg = SimpleClickConfig(img_size=(448, 448), patch_size=(patch, patch), embed_dim=dim, depth=depth, num_heads=heads)
    assert cfg.variant == name and cfg.global_blocks == global_blocks
    with torch.device("meta"):
        model = SimpleClickModel(cfg)
    assert model.backbone.grid_size == (448 // patch, 448 // patch) and model.backbone._windows() == (2, 2)
    assert model.patch_embed_coords.proj.in_channels == 3  # previous mask + positive + negative


def test_depth_must_split_into_four_groups():
    with pytest.raises(ValueError, match="divisible by 4"):
        replace(TINY, depth=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        replace(TINY, depth=10)


def test_the_position_embedding_is_resized_bicubically_for_448():
    model = tiny_model()
    before = model.backbone.pos_embed.detach().clone()
    model.backbone.resize_pos_embed((448, 448))
    assert model.backbone.grid_size == (28, 28) and model.backbone.pos_embed.shape == (1, 28 * 28 + 1, 32)
    assert torch.equal(model.backbone.pos_embed[:, :1], before[:, :1])
    grid = before[:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(28, 28), mode="bicubic", align_corners=False)
    assert torch.allclose(model.backbone.pos_embed[0, 1:], want.permute(0, 2, 3, 1).reshape(-1, 32))


# ----- click encoding and zoom-in ----------------------------------------------------------------------
def test_click_disks_have_radius_5_inclusive():
    maps = click_maps([(10, 10, True), (30, 40, False)], 50, 60)
    assert maps.shape == (2, 50, 60) and maps.dtype == torch.float32
    pos, neg = maps[0], maps[1]
    assert pos[10, 15] == 1 and pos[10, 16] == 0 and pos[13, 14] == 1 and pos[14, 14] == 0  # 9+16 = 25 inside
    assert int(pos.sum()) == 81 and int(neg.sum()) == 81 and neg[30, 40] == 1 and pos[30, 40] == 0
    assert click_maps([], 8, 8).sum() == 0


def test_click_distance_maps_without_disks():
    maps = click_maps([(0.0, 0.0, True)], 4, 4, radius=5.0, use_disks=False)
    assert maps[0, 0, 0] == 0 and torch.isclose(maps[0, 0, 3], torch.tanh(torch.tensor(2 * 3 / 5.0)))
    assert torch.all(maps[1] == 1)  # no negative click: as far as can be


def test_the_zoom_in_region():
    mask = np.zeros((400, 600), bool)
    mask[100:150, 200:300] = True
    # 50 x 100 grown 1.4x to 70 x 140, at least 200 a side, around the centre (124.5, 249.5)
    assert object_roi(mask, []) == (24, 224, 150, 350)
    assert object_roi(mask, [(390, 590, True)])[1:4:2] == (399, 599)  # a positive click grows the box, clamped
    assert box_iou((0, 9, 0, 9), (0, 9, 0, 9)) == 1.0 and box_iou((0, 9, 0, 9), (0, 4, 0, 9)) == 0.5
    state = ClickState(torch.from_numpy(mask.astype(np.float32)), None)
    assert next_roi(state, [(120, 250, True)]) == (24, 224, 150, 350)
    kept = ClickState(state.probs, (20, 230, 140, 360))
    assert next_roi(kept, [(120, 250, True)]) == (20, 230, 140, 360)  # close enough: kept
    assert next_roi(kept, [(120, 250, True), (300, 500, True)]) != (20, 230, 140, 360)  # a click outside: new
    empty = ClickState(torch.zeros(400, 600), (20, 230, 140, 360))
    assert next_roi(empty, [(120, 250, False)]) == (0, 399, 0, 599)  # nothing predicted: the whole image


# ----- the tool ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tool(ckpt) -> SimpleClickSegmenter:
    return SimpleClickSegmenter.from_checkpoint(ckpt, device="cpu", cache=EmbeddingCache(1 << 26))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(60, 90, (150, 200, 3), dtype=np.uint8)
    img[50:110, 70:150] = (200, 50, 40)
    return img


def test_segment_returns_a_mask_and_a_state_to_pass_back(tool, image):
    tool.set_image(image)
    first = tool.segment([Click(100, 80)])
    assert first.mask.shape == (150, 200) and first.mask.dtype == bool
    assert first.logits.shape == (4 + 150 * 200,) and first.logits.dtype == np.float32
    assert 0.0 <= first.score <= 1.0
    state = ClickState.unpack(first.logits, 150, 200)
    assert state.roi == (0, 149, 0, 199)  # the first click sees the whole image
    assert np.array_equal(first.mask, state.probs.numpy() > 0.49)
    clicks = [Click(100, 80), Click(20, 20, positive=False)]
    second = tool.segment(clicks, prev_logits=first.logits)
    again = tool.segment(clicks, prev_logits=first.logits)  # a pure function of the clicks and the state
    assert np.array_equal(second.logits, again.logits) and np.array_equal(second.mask, again.mask)
    fresh = tool.segment(clicks)  # without the state: another input (no previous mask)
    assert fresh.logits.shape == second.logits.shape


def test_a_box_is_ignored_and_no_clicks_keep_the_state(tool, image):
    tool.set_image(image)
    out = tool.segment([Click(100, 80)])
    boxed = tool.segment([Click(100, 80)], box=Box(0, 0, 50, 50))
    assert np.array_equal(out.logits, boxed.logits)
    none = tool.segment([], prev_logits=out.logits)
    assert np.array_equal(none.logits, out.logits) and np.array_equal(none.mask, out.mask)
    assert not tool.segment([]).mask.any()


def test_bad_state_is_refused(tool, image):
    tool.set_image(image)
    with pytest.raises(ValueError, match="SimpleClick state"):
        tool.segment([Click(1, 1)], prev_logits=np.zeros((1, 256, 256), np.float32))


def test_a_start_mask_is_the_previous_prediction(tool, image):
    tool.set_image(image)
    start = np.zeros((150, 200), bool)
    start[50:110, 70:150] = True
    prior = tool.mask_prior(start)
    state = ClickState.unpack(prior, 150, 200)
    assert state.roi is None and np.array_equal(state.probs.numpy() > 0.49, start)
    out = tool.segment([Click(100, 80)], prev_logits=prior)
    assert ClickState.unpack(out.logits, 150, 200).roi == object_roi(start, [(80, 100, True)])
    with pytest.raises(ValueError):
        tool.mask_prior(np.zeros((10, 10), bool))


def test_clicks_are_rounded_and_clamped_to_pixels(tool, image):
    tool.set_image(image)
    assert tool._points([Click(99.6, 80.4), Click(-3, 500, False)]) == [(80, 100, True), (149, 0, False)]


def test_the_image_is_cached_by_content(ckpt, image):
    cache = EmbeddingCache(1 << 26)
    tool = SimpleClickSegmenter.from_checkpoint(ckpt, device="cpu", cache=cache)
    tool.set_image(image)
    tool.set_image(image.copy())
    assert cache.misses == 1 and cache.hits == 1


def test_build_segmenter_and_settings(ckpt):
    tool = build_segmenter("simpleclick", EmbeddingCache(1 << 20), simpleclick_checkpoint=str(ckpt), device="cpu")
    assert isinstance(tool, SimpleClickSegmenter)
    with pytest.raises(ValueError, match="SEGAGENT_SIMPLECLICK_CHECKPOINT"):
        build_segmenter("simpleclick", EmbeddingCache(1 << 20))
    with pytest.raises(SettingsError, match="SEGAGENT_SIMPLECLICK_CHECKPOINT"):
        Settings.from_env({"SEGAGENT_SEGMENTER": "simpleclick"})
    s = Settings.from_env({"SEGAGENT_SEGMENTER": "simpleclick", "SEGAGENT_SIMPLECLICK_CHECKPOINT": str(ckpt)})
    assert s.simpleclick_checkpoint == str(ckpt)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(replace(TINY, use_disks=False, head_upsample="x2", head_norm="BN", with_prev_mask=False))
    loaded = load_simpleclick(save_simpleclick(model, tmp_path / "m.pth"))
    assert loaded.cfg == model.cfg and loaded.patch_embed_coords.proj.in_channels == 2
    x, maps = torch.rand(1, 3, 448, 448), torch.zeros(1, 2, 448, 448)
    model.backbone.resize_pos_embed((448, 448))
    loaded.backbone.resize_pos_embed((448, 448))
    with torch.inference_mode():
        assert torch.equal(model(x, maps), loaded(x, maps))

