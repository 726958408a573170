"""Tiny random Qwen-VL-Chat checkpoints under the ORIGINAL parameter names (tests only).

The shapes follow the original code's constructors: the resampler has ``output_dim // 128`` heads and
``output_dim`` must equal the LM width, so the smallest LM is 128 wide (4 heads of 32). Norm weights and biases
are randomised so that a wrong mapping cannot hide behind ones and zeros.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from segagent_backend.agent.qwen_native.save import DEFAULT_GENERATION_CONFIG
from segagent_backend.agent.qwen_native.tokenizer import VOCAB_FILE

REPO = Path(__file__).resolve().parents[2]
ORACLE_CODE = REPO.parent / "shared" / "oracles" / "qwen-vl-chat"
ORACLE_PY_FILES = ("configuration_qwen.py", "modeling_qwen.py", "visual.py", "tokenization_qwen.py",
                   "qwen_generation_utils.py")


def tiny_config(vocab_size: int = 151936, layers: int = 2, hidden: int = 128, heads: int = 4,
                vision_width: int = 32, vision_heads: int = 4, vision_layers: int = 2) -> dict:
    """A Qwen-VL-Chat config.json (dict) small enough for CPU tests; fp32; real 2048/NTK/logn settings.

    hidden must be a multiple of 128 (the resampler has hidden // 128 heads); head_dim = hidden // heads.
    """
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                     "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0,
        "bf16": False, "fp16": False, "fp32": True,
        "hidden_size": hidden, "num_attention_heads": heads, "kv_channels": hidden // heads,
        "num_hidden_layers": layers,
        "intermediate_size": 2 * 96, "initializer_range": 0.02, "layer_norm_epsilon": 1e-6,
        "max_position_embeddings": 8192, "model_type": "qwen", "no_bias": True, "onnx_safe": None,
        "rotary_emb_base": 10000, "rotary_pct": 1.0, "scale_attn_weights": True, "seq_length": 2048,
        "tie_word_embeddings": False, "tokenizer_type": "QWenTokenizer", "torch_dtype": "float32",
        "transformers_version": "4.32.0", "use_cache": True, "use_dynamic_ntk": True, "use_flash_attn": False,
        "use_logn_attn": True,
        "visual": {"heads": vision_heads, "image_size": 448, "image_start_id": 151857, "layers": vision_layers,
                   "mlp_ratio": 4.9231, "output_dim": hidden, "patch_size": 14, "width": vision_width},
        "vocab_size": vocab_size,
    }


def _sincos(dim: int, grid: int) -> torch.Tensor:
    from segagent_backend.agent.qwen_native.vision import sincos_2d

    return torch.from_numpy(sincos_2d(dim, grid))


def random_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for ``config`` under the checkpoint's names (``transformer.*``, ``lm_head``)."""
    g = torch.Generator().manual_seed(seed)

    def lin(out: int, inp: int) -> torch.Tensor:
        return torch.randn(out, inp, generator=g) / inp ** 0.5

    def vec(n: int, centre: float = 0.0, scale: float = 0.1) -> torch.Tensor:
        return centre + scale * torch.randn(n, generator=g)

    h, v, mlp = config["hidden_size"], config["vocab_size"], config["intermediate_size"] // 2
    sd = {"transformer.wte.weight": torch.randn(v, h, generator=g), "lm_head.weight": lin(v, h),
          "transformer.ln_f.weight": vec(h, 1.0)}
    for i in range(config["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": vec(h, 1.0), p + "ln_2.weight": vec(h, 1.0),
                   p + "attn.c_attn.weight": lin(3 * h, h), p + "attn.c_attn.bias": vec(3 * h, 0.0, 0.2),
                   p + "attn.c_proj.weight": lin(h, h),
                   p + "mlp.w1.weight": lin(mlp, h), p + "mlp.w2.weight": lin(mlp, h),
                   p + "mlp.c_proj.weight": lin(h, mlp)})
    vis = config["visual"]
    w, d, patch = vis["width"], vis["output_dim"], vis["patch_size"]
    m = int(w * vis["mlp_ratio"])
    p = "transformer.visual."
    sd.update({p + "conv1.weight": torch.randn(w, 3, patch, patch, generator=g) / (3 * patch * patch) ** 0.5,
               p + "positional_embedding": torch.randn(256, w, generator=g) * w ** -0.5,
               p + "ln_pre.weight": vec(w, 1.0), p + "ln_pre.bias": vec(w),
               p + "ln_post.weight": vec(d, 1.0), p + "ln_post.bias": vec(d),
               p + "proj": torch.randn(d, d, generator=g) * d ** -0.5})
    for i in range(vis["layers"]):
        q = f"{p}transformer.resblocks.{i}."
        sd.update({q + "ln_1.weight": vec(w, 1.0), q + "ln_1.bias": vec(w),
                   q + "ln_2.weight": vec(w, 1.0), q + "ln_2.bias": vec(w),
                   q + "attn.in_proj.weight": lin(3 * w, w), q + "attn.in_proj.bias": vec(3 * w),
                   q + "attn.out_proj.weight": lin(w, w), q + "attn.out_proj.bias": vec(w),
                   q + "mlp.c_fc.weight": lin(m, w), q + "mlp.c_fc.bias": vec(m),
                   q + "mlp.c_proj.weight": lin(w, m), q + "mlp.c_proj.bias": vec(w)})
    a = p + "attn_pool."
    sd.update({a + "pos_embed": _sincos(d, 16), a + "query": torch.randn(256, d, generator=g) * 0.5,
               a + "kv_proj.weight": lin(d, w), a + "ln_q.weight": vec(d, 1.0), a + "ln_q.bias": vec(d),
               a + "ln_kv.weight": vec(d, 1.0), a + "ln_kv.bias": vec(d),
               a + "attn.in_proj_weight": lin(3 * d, d), a + "attn.in_proj_bias": vec(3 * d),
               a + "attn.out_proj.weight": lin(d, d), a + "attn.out_proj.bias": vec(d)})
    return sd


def save_checkpoint(folder: Path, config: dict, state: dict[str, torch.Tensor], layout: str = "safetensors",
                    shards: int = 1, tokenizer: bool = True) -> Path:
    """Write config.json (+ the production default generation_config.json, + qwen.tiktoken) and the weights.

    layout: ``safetensors`` or ``bin``; shards > 1 writes ``model-0000i-of-0000n.*`` and the index file the
    hub uses. No .py file is written: the folder is what the native loader must cope with.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "generation_config.json").write_text(json.dumps(DEFAULT_GENERATION_CONFIG))
    if tokenizer:
        shutil.copyfile(ORACLE_CODE / VOCAB_FILE, folder / VOCAB_FILE)
    names = list(state)
    groups = [names[i::shards] for i in range(shards)]
    ext = "safetensors" if layout == "safetensors" else "bin"
    base = "model" if layout == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"{base}.{ext}" if shards == 1 else f"{base}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {n: state[n].contiguous() for n in group}
        if layout == "safetensors":
            from safetensors.torch import save_file

            save_file(part, str(folder / fname), metadata={"format": "pt"})
        else:
            torch.save(part, folder / fname)
        weight_map.update({n: fname for n in group})
    if shards > 1:
        (folder / f"{base}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def make_image(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """A small random-ish RGB image saved as PNG (lossless, so both sides read the same pixels)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def oracle_code_dir() -> Optional[Path]:
    """The folder of the original Qwen-VL-Chat code and qwen.tiktoken, or None when absent."""
    ok = all((ORACLE_CODE / n).is_file() for n in ORACLE_PY_FILES + (VOCAB_FILE,))
    return ORACLE_CODE if ok else None
