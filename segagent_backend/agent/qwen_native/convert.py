"""Qwen-VL-Chat (Qwen-1) checkpoint -> transformers' own ``Qwen2ForCausalLM`` + the native vision tower.

Why Qwen2 fits Qwen-1 exactly (below 2048 positions): RMSNorm (eps ``layer_norm_epsilon``) before attention and
MLP, rotary over the full head (base ``rotary_emb_base``, rotate-half layout, ``cat(freqs, freqs)``), q/k/v with
bias and the output projection without, SwiGLU MLP ``down(silu(gate(x)) * up(x))``, untied ``lm_head``, no
sliding window. Qwen-1 differs only by logn attention scaling and dynamic NTK rotary scaling, both inactive
for sequences up to ``seq_length`` (2048) positions, which is why longer prompts are refused (model.py).

Name map (checkpoint -> Qwen2ForCausalLM):

=====================================  ==========================================================
``transformer.wte.weight``             ``model.embed_tokens.weight``
``transformer.h.N.ln_1.weight``        ``model.layers.N.input_layernorm.weight``
``transformer.h.N.attn.c_attn.*``      split in three equal row blocks: ``self_attn.{q,k,v}_proj.*``
``transformer.h.N.attn.c_proj.weight`` ``model.layers.N.self_attn.o_proj.weight`` (no bias)
``transformer.h.N.ln_2.weight``        ``model.layers.N.post_attention_layernorm.weight``
``transformer.h.N.mlp.w2.weight``      ``model.layers.N.mlp.gate_proj.weight`` (inside silu)
``transformer.h.N.mlp.w1.weight``      ``model.layers.N.mlp.up_proj.weight``
``transformer.h.N.mlp.c_proj.weight``  ``model.layers.N.mlp.down_proj.weight``
``transformer.ln_f.weight``            ``model.norm.weight``
``lm_head.weight``                     ``lm_head.weight``
``transformer.visual.X``               ``X`` of :class:`~.vision.QwenVisionTower`
=====================================  ==========================================================
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import torch

from ..loading import ModelLoadError

VISUAL_PREFIX = "transformer.visual."
# names the checkpoint's own code registers as buffers / ignores on load
IGNORED = re.compile(r"(^|\.)(masked_bias|rotary_emb\.inv_freq)$")
_LAYER = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
_LAYER_MAP = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.w2.weight": "mlp.gate_proj.weight",
    "mlp.w1.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}


def check_qwen_config(config: Mapping[str, Any], where: str = "config.json") -> None:
    """Raise ModelLoadError unless ``config`` describes a Qwen-VL(-Chat) model this port reproduces."""
    if config.get("model_type") != "qwen":
        raise ModelLoadError(f"{where}: model_type is {config.get('model_type')!r}, expected 'qwen' (Qwen-VL-Chat)")
    if not isinstance(config.get("visual"), Mapping):
        raise ModelLoadError(f"{where}: no 'visual' block: a text-only Qwen checkpoint, not Qwen-VL-Chat")
    problems = []
    heads, hidden = config.get("num_attention_heads", 32), config.get("hidden_size", 4096)
    if config.get("kv_channels", 128) * heads != hidden:
        problems.append("kv_channels * num_attention_heads != hidden_size")
    if float(config.get("rotary_pct", 1.0)) != 1.0:
        problems.append("rotary_pct != 1 (partial rotary)")
    if not config.get("no_bias", True):
        problems.append("no_bias is false (biased MLP / output projection)")
    if config.get("tie_word_embeddings", False):
        problems.append("tied word embeddings")
    if config["visual"].get("output_dim", 4096) != hidden:
        problems.append("visual.output_dim != hidden_size")
    if problems:
        raise ModelLoadError(f"{where}: unsupported Qwen-VL variant: {'; '.join(problems)}")


def qwen2_config(config: Mapping[str, Any], attn_implementation: str = "sdpa"):
    """The ``Qwen2Config`` equivalent to a Qwen-VL-Chat ``config.json`` (a dict)."""
    from transformers import Qwen2Config

    check_qwen_config(config)
    heads = config.get("num_attention_heads", 32)
    cfg = Qwen2Config(
        vocab_size=config.get("vocab_size", 151936),
        hidden_size=config.get("hidden_size", 4096),
        intermediate_size=config.get("intermediate_size", 22016) // 2,
        num_hidden_layers=config.get("num_hidden_layers", 32),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        max_position_embeddings=config.get("seq_length", 2048),
        rms_norm_eps=config.get("layer_norm_epsilon", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rotary_emb_base", 10000))},
        tie_word_embeddings=False,
        use_sliding_window=False,
        attention_dropout=0.0,
        pad_token_id=None,  # Qwen2 would make it the embedding's padding_idx; pad/eos live in generation_config
        eos_token_id=None,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


def convert_lm_tensor(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """One LM tensor under its checkpoint name -> {Qwen2ForCausalLM name: tensor} (3 entries for c_attn).

    Raises KeyError for a name that is not part of the Qwen-1 language model.
    """
    if name in _TOP_MAP:
        return {_TOP_MAP[name]: tensor}
    match = _LAYER.match(name)
    if not match:
        raise KeyError(name)
    layer, rest = match.groups()
    prefix = f"model.layers.{layer}."
    if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
        kind = rest.rsplit(".", 1)[1]
        q, k, v = tensor.chunk(3, dim=0)
        return {f"{prefix}self_attn.{p}_proj.{kind}": t.contiguous() for p, t in zip("qkv", (q, k, v))}
    if rest in _LAYER_MAP:
        return {prefix + _LAYER_MAP[rest]: tensor}
    raise KeyError(name)


def convert_state_dict(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor],
                                                                               dict[str, torch.Tensor]]:
    """Checkpoint (name, tensor) pairs -> (Qwen2ForCausalLM state dict, vision tower state dict).

    Buffers the original code ignores (``masked_bias``, ``rotary_emb.inv_freq``) are dropped; any other unknown
    name raises ModelLoadError (a wrong or modified checkpoint must not load silently).
    """
    lm: dict[str, torch.Tensor] = {}
    visual: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in tensors:
        if name.startswith(VISUAL_PREFIX):
            visual[name[len(VISUAL_PREFIX):]] = tensor
        elif IGNORED.search(name):
            continue
        else:
            try:
                lm.update(convert_lm_tensor(name, tensor))
            except KeyError:
                unknown.append(name)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise ModelLoadError(f"unexpected tensors for Qwen-VL-Chat: {shown}")
    return lm, visual
