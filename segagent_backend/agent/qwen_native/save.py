"""Save a :class:`~.model.QwenVLChatNative` as a Qwen-VL-Chat checkpoint folder under the ORIGINAL names.

The inverse of :mod:`.convert`: ``q/k/v_proj`` weights and biases are concatenated back into the fused
``attn.c_attn``, ``gate_proj`` -> ``mlp.w2``, ``up_proj`` -> ``mlp.w1``, ``down_proj`` -> ``mlp.c_proj``,
``o_proj`` -> ``attn.c_proj``, norms and embeddings back to ``transformer.*``, the vision tower under
``transformer.visual.``. The folder holds ``config.json`` (the model's own, with the dtype flags of the
saved weights), ``generation_config.json``, ``qwen.tiktoken`` and safetensors weights (one
``model.safetensors``, or shards + ``model.safetensors.index.json`` past ``max_shard_bytes``), so it loads
back through :func:`~.loader.load_qwen_vl_chat_native` (and, with the original ``*.py`` files copied by
``extra_files_from``, through the release's own code).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from .convert import VISUAL_PREFIX, _LAYER_MAP, _TOP_MAP
from .tokenizer import EOD_ID, VOCAB_FILE

_INVERSE_TOP = {v: k for k, v in _TOP_MAP.items()}
_INVERSE_LAYER = {v: k for k, v in _LAYER_MAP.items()}
_QWEN2_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# what a release folder holds besides the weights that the saved folder keeps (remote code, tokenizer config)
EXTRA_FILES = ("generation_config.json", "tokenizer_config.json", "special_tokens_map.json", "*.py")
DEFAULT_GENERATION_CONFIG = {"chat_format": "chatml", "eos_token_id": EOD_ID, "pad_token_id": EOD_ID,
                             "max_window_size": 6144, "max_new_tokens": 512, "do_sample": False}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def original_lm_state_dict(lm_state: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Qwen2ForCausalLM state dict -> (checkpoint name, tensor) pairs (c_attn fused again).

    Raises KeyError for a tensor the Qwen-1 checkpoint has no name for (e.g. a LoRA weight left unmerged).
    """
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in lm_state.items():
        if name in _INVERSE_TOP:
            yield _INVERSE_TOP[name], tensor
            continue
        match = _QWEN2_LAYER.match(name)
        if not match:
            raise KeyError(name)
        layer, rest = match.groups()
        prefix = f"transformer.h.{layer}."
        qkv = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if qkv:
            part, kind = qkv.groups()
            parts = fused.setdefault((prefix, kind), {})
            parts[part] = tensor
            if len(parts) == 3:
                yield f"{prefix}attn.c_attn.{kind}", torch.cat([parts[p] for p in "qkv"], dim=0)
                del fused[(prefix, kind)]
        elif rest in _INVERSE_LAYER:
            yield prefix + _INVERSE_LAYER[rest], tensor
        else:
            raise KeyError(name)
    if fused:
        raise KeyError(f"incomplete q/k/v projections: {sorted(fused)}")


def original_state_dict(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of every weight of a QwenVLChatNative, as the release names them."""
    yield from original_lm_state_dict(model.lm.state_dict())
    for name, tensor in model.visual.state_dict().items():
        yield VISUAL_PREFIX + name, tensor


def _config_for(config: dict, dtype: torch.dtype) -> dict:
    out = dict(config)
    out["torch_dtype"] = _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
    out["bf16"], out["fp16"], out["fp32"] = dtype == torch.bfloat16, dtype == torch.float16, dtype == torch.float32
    return out


def save_qwen_vl_chat_native(model, folder: Union[str, Path], vocab_file: Union[str, Path],
                             extra_files_from: Optional[Union[str, Path]] = None,
                             max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write ``model`` (a QwenVLChatNative, LoRA merged) as a checkpoint folder; returns ``folder``.

    vocab_file: the ``qwen.tiktoken`` to copy. extra_files_from: a checkpoint folder (the base) whose
    ``generation_config.json``, tokenizer config and ``*.py`` files are copied (a default
    generation_config.json is written when it has none). Weights are written in the model's dtype.
    ``folder`` must not hold other weights (it is meant to be a fresh temporary folder).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if extra_files_from is not None:
        extras = Path(extra_files_from)
        for pattern in EXTRA_FILES:
            for path in extras.glob(pattern):
                if path.is_file():
                    shutil.copyfile(path, folder / path.name)
    if not (folder / "generation_config.json").is_file():
        (folder / "generation_config.json").write_text(json.dumps(DEFAULT_GENERATION_CONFIG, indent=2))
    shutil.copyfile(vocab_file, folder / VOCAB_FILE)
    (folder / "config.json").write_text(json.dumps(_config_for(model.config, model.dtype), indent=2))

    # shards are written as they fill (at most one shard of CPU copies in memory), then named i-of-n
    written: list[tuple[Path, list[str]]] = []
    shard: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush():
        path = folder / f".shard-{len(written) + 1:05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        written.append((path, list(shard)))

    for name, tensor in original_state_dict(model):
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
            shard, size = {}, 0
        shard[name] = tensor.detach().to("cpu").contiguous()
        size += nbytes
        total += nbytes
    flush()
    if len(written) == 1:
        written[0][0].rename(folder / "model.safetensors")
        return folder
    weight_map = {}
    for i, (path, names) in enumerate(written):
        final = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        path.rename(folder / final)
        weight_map.update({n: final for n in names})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder
