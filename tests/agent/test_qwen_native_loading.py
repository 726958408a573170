"""Native Qwen-VL-Chat loading without the oracle: weight layouts, no code from the folder, errors, 2048 cap.

Uses a tiny checkpoint with a 1000-row vocabulary (no tokenizer needed), so nothing here depends on
``../shared``; the checks against the original code live in test_qwen_native.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from segagent_backend.agent.loading import ModelLoadError
from segagent_backend.agent.qwen_native import MAX_POSITIONS, PromptTooLongError, load_qwen_vl_chat_native
from segagent_backend.agent.qwen_native.convert import convert_state_dict
from segagent_backend.agent.qwen_native.loader import load_native_model
from tests.oracle.tiny_qwen import random_state_dict, save_checkpoint, tiny_config

VOCAB = 1000


@pytest.fixture(scope="module")
def config() -> dict:
    return tiny_config(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def state(config) -> dict:
    return random_state_dict(config, seed=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, config, state) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("qwen-small"), config, state, tokenizer=False)


@pytest.fixture(scope="module")
def model(folder):
    return load_native_model(folder, device="cpu")


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def reference(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_loads_fp32_in_eval_mode_with_every_weight(model, state):
    assert not model.training and model.dtype == torch.float32
    assert all(not p.is_meta and not p.requires_grad for p in model.parameters())
    lm, visual = convert_state_dict(state.items())
    assert set(lm) == set(model.lm.state_dict()) and set(visual) == set(model.visual.state_dict())
    for name, tensor in lm.items():
        assert torch.equal(model.lm.state_dict()[name], tensor), name
    # the fused c_attn is [Q; K; V] row blocks with bias
    fused = state["transformer.h.1.attn.c_attn.weight"]
    assert torch.equal(model.lm.model.layers[1].self_attn.k_proj.weight, fused[128:256])
    assert torch.equal(model.lm.model.layers[1].self_attn.v_proj.bias, state["transformer.h.1.attn.c_attn.bias"][256:])
    assert model.lm.model.layers[0].self_attn.o_proj.bias is None
    assert model.lm.config.intermediate_size == 96 and model.lm.config.tie_word_embeddings is False


@pytest.mark.parametrize("layout,shards", [("safetensors", 3), ("bin", 1), ("bin", 2)])
def test_sharded_and_bin_layouts_load_the_same_weights(tmp_path, config, state, ids, reference, layout, shards):
    folder = save_checkpoint(tmp_path / "ckpt", config, state, layout=layout, shards=shards, tokenizer=False)
    index = {("safetensors", 3): "model.safetensors.index.json", ("bin", 2): "pytorch_model.bin.index.json"}
    if (layout, shards) in index:
        assert (folder / index[(layout, shards)]).is_file()
    with torch.no_grad():
        assert torch.equal(load_native_model(folder, device="cpu")(ids).logits, reference)


def test_loose_safetensors_shards_without_an_index_load(tmp_path, config, state, ids, reference):
    folder = save_checkpoint(tmp_path / "ckpt", config, state, shards=2, tokenizer=False)
    (folder / "model.safetensors.index.json").unlink()
    with torch.no_grad():
        assert torch.equal(load_native_model(folder, device="cpu")(ids).logits, reference)


def test_never_runs_python_files_of_the_folder(tmp_path, folder, ids, reference):
    copy = Path(shutil.copytree(folder, tmp_path / "ckpt"))
    for name in ("modeling_qwen.py", "configuration_qwen.py", "visual.py", "tokenization_qwen.py",
                 "qwen_generation_utils.py", "__init__.py"):
        (copy / name).write_text("raise SystemExit('the checkpoint code must never run')\n")
    with torch.no_grad():
        assert torch.equal(load_native_model(copy, device="cpu")(ids).logits, reference)


def test_bf16_load_runs_close_to_fp32(folder, ids, reference):
    model = load_native_model(folder, device="cpu", dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.visual.conv1.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(ids).logits.float()
        feats = model.encode_images(torch.zeros(1, 3, 448, 448))
    assert feats.dtype == torch.bfloat16
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max()


def test_encode_images_shape(model):
    pixels = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    feats = model.encode_images(pixels)
    assert feats.shape == (2, 256, 128) and torch.isfinite(feats).all()
    assert torch.allclose(model.encode_images(pixels[1:]), feats[1:], atol=1e-5)  # rows are independent


def _broken(tmp_path: Path, folder: Path, edit) -> Path:
    copy = Path(shutil.copytree(folder, tmp_path / "broken"))
    edit(copy)
    return copy


def _set_config(**changes):
    def edit(path: Path):
        cfg = json.loads((path / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (path / "config.json").write_text(json.dumps(cfg))
    return edit


def _drop_tensor(name: str, add: bool = False):
    def edit(path: Path):
        from safetensors.torch import load_file, save_file

        sd = load_file(str(path / "model.safetensors"))
        if add:
            sd[name] = torch.zeros(3)
        else:
            del sd[name]
        save_file(sd, str(path / "model.safetensors"))
    return edit


@pytest.mark.parametrize("edit,message", [
    (lambda p: (p / "config.json").unlink(), "no config.json"),
    (lambda p: (p / "config.json").write_text("{not json"), "cannot read"),
    (_set_config(model_type="llama"), "expected 'qwen'"),
    (_set_config(visual=None), "no 'visual' block"),
    (lambda p: (p / "model.safetensors").unlink(), "holds no weights"),
    (lambda p: (p / "model.safetensors").write_bytes(b"garbage"), "cannot read weights"),
    (_drop_tensor("transformer.h.1.mlp.w1.weight"), "weights missing"),
    (_drop_tensor("transformer.h.0.attn.bogus", add=True), "unexpected tensors"),
    (_set_config(intermediate_size=2 * 64), "shape"),
], ids=["no-config", "bad-json", "llama", "text-only", "no-weights", "garbage", "missing", "unexpected", "shape"])
def test_wrong_folders_raise_model_load_error(tmp_path, folder, edit, message):
    with pytest.raises(ModelLoadError, match=message):
        load_native_model(_broken(tmp_path, folder, edit), device="cpu")


def test_missing_folder_and_missing_tokenizer_raise_model_load_error(tmp_path, folder):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_qwen_vl_chat_native(tmp_path / "nowhere", device="cpu")
    with pytest.raises(ModelLoadError, match="qwen.tiktoken"):
        load_qwen_vl_chat_native(folder, device="cpu")


def test_more_than_2048_positions_are_refused(model):
    ok = torch.zeros(1, MAX_POSITIONS, dtype=torch.long)
    with torch.no_grad():
        assert model(ok, logits_to_keep=1).logits.shape == (1, 1, VOCAB)
        with pytest.raises(PromptTooLongError, match="at most 2048"):
            model(torch.zeros(1, MAX_POSITIONS + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="prompt \\+ max_new_tokens needs 2050 positions"):
        model.generate(torch.zeros(1, MAX_POSITIONS - 14, dtype=torch.long), max_new_tokens=16)


def test_in_memory_jpeg_round_trip_equals_the_released_temporary_file(tmp_path):
    import numpy as np
    from PIL import Image

    from segagent_backend.agent.qwen_native import preprocess_images, released_jpeg

    overlay = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    path = tmp_path / "overlay.jpg"
    Image.fromarray(overlay).save(path)  # what QwenVLChatPolicy.write_overlay does
    from_file = preprocess_images([str(path)])
    assert from_file.shape == (1, 3, 448, 448) and from_file.dtype == torch.float32
    assert torch.equal(preprocess_images([released_jpeg(overlay)]), from_file)
    assert not torch.equal(preprocess_images([overlay]), from_file)  # JPEG is lossy: the round trip matters


@pytest.mark.parametrize("device_map", ["auto", {"visual": "cpu", "lm.model": "cpu", "lm.lm_head": "cpu"}],
                         ids=["auto", "dict"])
def test_device_map_loads_the_same_model(folder, ids, reference, device_map):
    """On this CPU-only machine every module lands on the CPU (splitting over GPUs is not exercised here)."""
    pytest.importorskip("accelerate", reason="device_map needs accelerate")
    model = load_native_model(folder, device_map=device_map)
    assert model.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference)


def test_bad_device_maps_are_refused(folder):
    with pytest.raises(ModelLoadError, match="places no module"):
        load_native_model(folder, device_map={"visual": "cpu"})
    with pytest.raises(ModelLoadError, match="disk"):
        load_native_model(folder, device_map={"": "disk"})
    with pytest.raises(ValueError, match="invalid device_map"):
        load_native_model(folder, device_map="balanced_low_0")
