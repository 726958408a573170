"""Load a Qwen-VL-Chat / SegAgent-Qwen checkpoint folder into :class:`~.model.QwenVLChatNative`.

Reads only ``config.json``, the weights and ``qwen.tiktoken``: no Python file of the folder is imported or
executed (``trust_remote_code`` is never involved) and ``.bin`` shards are read with
``torch.load(weights_only=True)``. Weight layouts, in this order of preference:
``model.safetensors.index.json`` (sharded), ``model.safetensors``, ``pytorch_model.bin.index.json``
(sharded), ``pytorch_model.bin``, else every ``*.safetensors`` of the folder.

The model is built on the meta device and each shard is converted (:mod:`.convert`), cast and assigned in
place, so peak memory stays near one copy of the weights. Defaults: CUDA -> bfloat16 (the release's dtype),
CPU -> float32.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

from ..loading import ModelLoadError, resolve_checkpoint, resolve_device
from .convert import check_qwen_config, convert_state_dict
from .model import QwenVLChatNative
from .tokenizer import VOCAB_FILE, QwenTokenizer
from .vision import sincos_2d

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


def read_config(folder: Union[str, Path]) -> dict:
    """``config.json`` of a Qwen-VL-Chat folder as a dict; ModelLoadError for anything else."""
    folder = Path(resolve_checkpoint(folder, "Qwen-VL-Chat folder"))
    path = folder / "config.json"
    if not path.is_file():  # a hub id: the native model loads only from a folder on this machine
        raise ModelLoadError(f"{str(folder)!r} is not a Qwen-VL-Chat folder on this machine: no config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {str(path)!r}: {exc}") from exc
    check_qwen_config(config, str(path))
    return config


def weight_files(folder: Union[str, Path]) -> list[Path]:
    """The weight files to read, in order (see module docstring); ModelLoadError when there are none."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        single = folder / index_name[:-len(".index.json")]
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as exc:
                raise ModelLoadError(f"cannot read the shard index {str(index)!r}: {exc}") from exc
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise ModelLoadError(f"{str(index)!r} names missing shard(s): {', '.join(missing)}")
            return [folder / n for n in names]
        if single.is_file():
            return [single]
    loose = sorted(folder.glob("*.safetensors"))
    if loose:
        return loose
    raise ModelLoadError(f"{str(folder)!r} holds no weights (model.safetensors[.index.json] or "
                         "pytorch_model.bin[.index.json])")


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, CPU tensor) pairs of one safetensors or .bin file (``.bin`` loaded with weights_only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)
        else:
            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ModelLoadError(f"{str(path)!r} does not hold a state dict")
            yield from state.items()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot read weights from {str(path)!r}: {exc}") from exc


def _resolve_dtype(dtype: Union[str, torch.dtype], device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"invalid dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    return _DTYPES[dtype]


NO_SPLIT = ["Qwen2DecoderLayer", "QwenVisionTower"]


def _device_map(model: QwenVLChatNative, device_map: Union[str, dict], dtype: torch.dtype) -> dict:
    """{module name: device} from ``"auto"`` (accelerate spreads the layers over the GPUs, then CPU) or a dict."""
    if isinstance(device_map, dict):
        return dict(device_map)
    if device_map != "auto":
        raise ValueError(f"invalid device_map {device_map!r}: use 'auto' or a {{module name: device}} dict")
    try:
        from accelerate import infer_auto_device_map
    except ImportError as exc:
        raise ModelLoadError("device_map='auto' needs accelerate (pip install accelerate)") from exc
    return infer_auto_device_map(model, no_split_module_classes=NO_SPLIT, dtype=dtype)


def _lookup(device_map: dict, name: str) -> torch.device:
    """The device of the longest ``device_map`` key that is ``name`` or one of its module prefixes."""
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        key = ".".join(parts[:i])
        if key in device_map:
            where = device_map[key]
            if where == "disk":
                raise ModelLoadError("device_map puts weights on disk: not supported, give the GPUs/CPU more room")
            return torch.device(f"cuda:{where}" if isinstance(where, int) else where)
    raise ModelLoadError(f"device_map places no module holding {name!r}")


def load_native_model(folder: Union[str, Path], device: str = "auto", dtype: Union[str, torch.dtype] = "auto",
                      attn_implementation: str = "sdpa",
                      device_map: Optional[Union[str, dict]] = None) -> QwenVLChatNative:
    """The model of a Qwen-VL-Chat checkpoint folder, in eval mode on ``device`` in ``dtype``.

    ``device_map`` (``"auto"`` or {module name: device}, needs accelerate) spreads the model over several
    devices instead (``device`` then only decides the ``auto`` dtype); each tensor is loaded straight onto
    its device and accelerate's hooks move activations between them.
    """
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    folder = Path(folder).expanduser()
    config = read_config(folder)
    if device_map is not None and device == "auto" and torch.cuda.is_available():
        device = "cuda"
    dev = resolve_device(device)
    dt = _resolve_dtype(dtype, dev)
    files = weight_files(folder)
    with torch.device("meta"):
        model = QwenVLChatNative(config, attn_implementation)
    placement = _device_map(model, device_map, dt) if device_map is not None else {"": dev}
    want = {"lm": set(model.lm.state_dict()), "visual": set(model.visual.state_dict())}
    seen: dict[str, set] = {"lm": set(), "visual": set()}

    def place(part: str, name: str, tensor: torch.Tensor) -> torch.Tensor:
        target = _lookup(placement, f"{part}.{name}")
        return tensor.to(device=target, dtype=dt) if tensor.is_floating_point() else tensor.to(target)

    for path in files:
        lm, visual = convert_state_dict(iter_tensors(path))
        for part, tensors in (("lm", lm), ("visual", visual)):
            module = getattr(model, part)
            extra = sorted(set(tensors) - want[part])
            if extra:
                raise ModelLoadError(f"{str(path)!r}: unexpected {part} tensors {extra[:5]}")
            shapes = module.state_dict()
            for name, tensor in tensors.items():
                if tuple(tensor.shape) != tuple(shapes[name].shape):
                    raise ModelLoadError(f"{str(path)!r}: {name} has shape {tuple(tensor.shape)}, config.json "
                                         f"implies {tuple(shapes[name].shape)}")
            module.load_state_dict({n: place(part, n, t) for n, t in tensors.items()}, strict=False, assign=True)
            seen[part] |= set(tensors)
    if "attn_pool.pos_embed" in want["visual"] - seen["visual"]:  # a fixed table: rebuild it when absent
        table = torch.from_numpy(sincos_2d(model.visual.output_dim, int(model.visual.n_queries ** 0.5)))
        model.visual.attn_pool.load_state_dict({"pos_embed": place("visual", "attn_pool.pos_embed", table)},
                                               strict=False, assign=True)
        seen["visual"].add("attn_pool.pos_embed")
    missing = sorted((want["lm"] - seen["lm"]) | {f"visual.{n}" for n in want["visual"] - seen["visual"]})
    if missing:
        raise ModelLoadError(f"{str(folder)!r}: weights missing for {len(missing)} tensor(s), e.g. {missing[:5]}")
    # non-persistent buffers are not in checkpoints: rebuild them for real (rotary follows its input's device)
    model.lm.model.rotary_emb = Qwen2RotaryEmbedding(config=model.lm.config).to(_lookup(placement, "lm.model.norm"))
    leftover = [n for n, b in model.named_buffers() if b.is_meta]
    if leftover:
        raise ModelLoadError(f"internal: buffers left on the meta device: {leftover}")
    model.requires_grad_(False)
    if device_map is not None and len({str(_lookup(placement, n)) for n, _ in model.named_parameters()}) > 1:
        from accelerate import dispatch_model

        model.visual = dispatch_model(model.visual, _sub_map(placement, "visual"))
        model.lm = dispatch_model(model.lm, _sub_map(placement, "lm"))
    return model.eval()


def _sub_map(placement: dict, part: str) -> dict:
    """The entries of ``placement`` under ``part`` with that prefix removed (``""`` for the part itself)."""
    out = {}
    for key, where in placement.items():
        if key in ("", part):
            out[""] = where
        elif key.startswith(part + "."):
            out[key[len(part) + 1:]] = where
    return out


def load_qwen_vl_chat_native(folder: Union[str, Path], device: str = "auto", dtype: Union[str, torch.dtype] = "auto",
                             attn_implementation: str = "sdpa", device_map: Optional[Union[str, dict]] = None
                             ) -> tuple[QwenVLChatNative, QwenTokenizer]:
    """(model, tokenizer) of a Qwen-VL-Chat / SegAgent-Qwen folder without running any of its code.

    device: auto (CUDA when available), cpu, cuda, cuda:N. dtype: auto (bf16 on CUDA, fp32 on CPU), bf16,
    fp16, fp32. device_map: see :func:`load_native_model`. Raises ModelLoadError naming the folder when it is
    not a loadable Qwen-VL-Chat checkpoint.
    """
    folder = Path(folder).expanduser()
    read_config(folder)
    if not (folder / VOCAB_FILE).is_file():
        raise ModelLoadError(f"{str(folder)!r} is not a Qwen-VL-Chat checkpoint: no {VOCAB_FILE}")
    try:
        tokenizer = QwenTokenizer.from_pretrained(folder)
    except ImportError as exc:
        raise ModelLoadError(f"the native Qwen-VL-Chat tokenizer needs tiktoken: {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot read {str(folder / VOCAB_FILE)!r}: {exc}") from exc
    model = load_native_model(folder, device, dtype, attn_implementation, device_map)
    model.name_or_path = str(folder)
    return model, tokenizer
