"""Reading SimpleClick's published checkpoints (``cocolvis_vit_{base,large,huge}.pth``) without running their code.

A checkpoint is ``torch.save({'config': ..., 'state_dict': ...})``: ``state_dict`` holds the tensors, ``config``
describes the model as ``{'class': 'isegm.model.is_plainvit_model.PlainVitModel', 'params': {name: {'type',
'value', 'specified'}}}``, and some values are pickled objects of the training code (the head's
``loss_decode`` is an ``isegm....CrossEntropyLoss`` instance, a module whose state names a loss function). A
plain ``torch.load(weights_only=True)`` refuses those names; ``weights_only=False`` would import and run
whatever the file names (a file can name ``os.system``).

``read_checkpoint`` keeps torch's weights-only unpickler and allow-lists ONLY names under the training
code's packages (``isegm.``, ``mmcv.``, ``mmseg.``), each mapped to its own inert placeholder class (an
``Inert``: it records the arguments and state it is given and does nothing else; nothing is imported).
Any other name the file asks for is refused with ``ModelLoadError`` naming it. The architecture is read from
the config's plain values (backbone/neck/head parameters, click encoding), never from the placeholders.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ...loading import ModelLoadError, checkpoint_file
from .model import IMAGENET_MEAN, IMAGENET_STD, UNUSED_PREFIXES, SimpleClickConfig, SimpleClickModel

__all__ = ["Inert", "PLACEHOLDER_PACKAGES", "config_from_checkpoint", "load_simpleclick", "read_checkpoint",
           "release_config", "save_simpleclick"]

#: the packages whose pickled names a checkpoint may carry; each becomes an inert placeholder
PLACEHOLDER_PACKAGES = ("isegm.", "mmcv.", "mmseg.")

_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL (\S+)")


class Inert:
    """A pickled class or function of the training code, read as a name: instances keep the arguments
    (``args``) and pickled state (``state``) they were built with; no code of the original runs."""

    pickled_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["args"] = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


def _placeholder(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (Inert,), {"pickled_name": name, "__module__": __name__})


def _reconstructor_for(placeholders: Mapping[str, type]):
    """A stand-in for ``copyreg._reconstructor`` (protocol 0/1 pickles of objects) that only builds
    placeholders."""
    allowed = set(placeholders.values())

    def _reconstructor(cls, base, state=None):
        if cls not in allowed:
            raise pickle.UnpicklingError(f"refusing to rebuild {cls!r}: not a placeholder of the training code")
        return cls.__new__(cls)

    return _reconstructor


def _may_stand_in(name: str) -> bool:
    return name.startswith(PLACEHOLDER_PACKAGES) or name == "copyreg._reconstructor"


def _refuse(path: Path, names) -> ModelLoadError:
    return ModelLoadError(
        f"SimpleClick checkpoint {path} asks to unpickle {', '.join(sorted(names))}: only tensors, plain values "
        f"and names of SimpleClick's own code ({', '.join(p + '*' for p in PLACEHOLDER_PACKAGES)}, read as inert "
        f"placeholders) are accepted; it was not loaded")


def _load_with(path: Path, names) -> Any:
    placeholders = {n: _placeholder(n) for n in names if n != "copyreg._reconstructor"}
    allow: list = [(cls, n) for n, cls in placeholders.items()]
    if "copyreg._reconstructor" in names:
        allow.append((_reconstructor_for(placeholders), "copyreg._reconstructor"))
    with torch.serialization.safe_globals(allow):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: Union[str, Path]) -> Any:
    """The unpickled content of ``path`` (a ``torch.save`` file), SimpleClick's names as placeholders.

    ModelLoadError when the file is missing or unreadable, or names anything else (e.g. ``os.system``).
    The published files are torch's zip format; a legacy-format file pickling a module object (which it stores
    with its source code) is refused."""
    path = Path(path)
    checkpoint_file(path, "SimpleClick checkpoint")
    names: set[str] = set()
    if zipfile.is_zipfile(path):
        try:  # a static listing of the pickle's names: nothing is built yet
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as exc:
            raise ModelLoadError(f"SimpleClick checkpoint {path} is unreadable: {type(exc).__name__}: {exc}") from exc
        bad = {n for n in names if not _may_stand_in(n)}
        if bad:
            raise _refuse(path, bad)
    for _ in range(64):  # the legacy (non-zip) format cannot be listed ahead: learn the names one refusal at a time
        try:
            return _load_with(path, names)
        except pickle.UnpicklingError as exc:
            found = _UNSUPPORTED.search(str(exc))
            if found is None or found[1] in names:
                raise ModelLoadError(f"SimpleClick checkpoint {path} is refused: {exc}") from exc
            if not _may_stand_in(found[1]):
                raise _refuse(path, {found[1]}) from exc
            names.add(found[1])
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"SimpleClick checkpoint {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    raise ModelLoadError(f"SimpleClick checkpoint {path} names too many classes of its training code")


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")


def config_from_checkpoint(config: Any) -> SimpleClickConfig:
    """The ``SimpleClickConfig`` a checkpoint's ``config`` (SimpleClick's serialised constructor arguments)
    describes. ValueError when it is not a plain-ViT SimpleClick model."""
    if not isinstance(config, dict) or "params" not in config or "class" not in config:
        raise ValueError("no SimpleClick model config ({'class': ..., 'params': ...})")
    cls = str(config["class"])
    if not cls.endswith("PlainVitModel"):
        raise ValueError(f"the model is {cls}, not a plain-ViT SimpleClick (PlainVitModel)")
    params = {k: (v.get("value") if isinstance(v, dict) and "value" in v else v) for k, v in config["params"].items()}
    bb, neck, head = (params.get(k) or {} for k in ("backbone_params", "neck_params", "head_params"))
    for what, d in (("backbone_params", bb), ("neck_params", neck), ("head_params", head)):
        if not isinstance(d, dict):
            raise ValueError(f"{what} is not a dict")
    for key in ("norm_layer", "act_layer", "cls_feature_dim"):
        if bb.get(key):
            raise ValueError(f"backbone_params.{key}={bb[key]!r} is not supported (the published models leave it unset)")
    norm_cfg = head.get("norm_cfg")
    act_cfg = head.get("act_cfg", {"type": "ReLU"})
    if isinstance(act_cfg, dict) and act_cfg.get("type", "ReLU") != "ReLU":
        raise ValueError(f"head act_cfg {act_cfg!r} is not supported (ReLU)")
    if head.get("interpolate_mode", "bilinear") != "bilinear":
        raise ValueError(f"head interpolate_mode {head['interpolate_mode']!r} is not supported (bilinear)")
    mean_std = params.get("norm_mean_std") or (IMAGENET_MEAN, IMAGENET_STD)
    embed_dim = int(bb.get("embed_dim", 768))
    out_dims = tuple(int(x) for x in neck.get("out_dims", (128, 256, 512, 1024)))
    return SimpleClickConfig(
        img_size=_pair(bb.get("img_size", (224, 224)), "img_size"),
        patch_size=_pair(bb.get("patch_size", (16, 16)), "patch_size"),
        in_chans=int(bb.get("in_chans", 3)),
        embed_dim=embed_dim,
        depth=int(bb.get("depth", 12)),
        num_heads=int(bb.get("num_heads", 12)),
        mlp_ratio=float(bb.get("mlp_ratio", 4.0)),
        qkv_bias=bool(bb.get("qkv_bias", True)),
        neck_out_dims=out_dims,
        head_in_channels=tuple(int(x) for x in head.get("in_channels", out_dims)),
        head_in_index=tuple(int(x) for x in head.get("in_index", range(len(out_dims)))),
        head_channels=int(head["channels"]),
        head_upsample=str(head.get("upsample", "x1")),
        head_num_classes=int(head.get("num_classes", 1)),
        head_align_corners=bool(head.get("align_corners", False)),
        head_norm=(norm_cfg or {}).get("type") if isinstance(norm_cfg, dict) else None,
        with_prev_mask=bool(params.get("with_prev_mask", False)),
        use_disks=bool(params.get("use_disks", False)),
        norm_radius=float(params.get("norm_radius", 5)),
        norm_mean=tuple(float(x) for x in mean_std[0]),
        norm_std=tuple(float(x) for x in mean_std[1]),
        model_class=cls,
    )


def load_simpleclick(checkpoint: Union[str, Path], device: Union[str, torch.device] = "cpu") -> SimpleClickModel:
    """A published (or same-format) SimpleClick plain-ViT ``.pth`` -> ``SimpleClickModel`` in eval mode on
    ``device``. ModelLoadError naming the file and the reason otherwise."""
    path = Path(checkpoint)
    data = read_checkpoint(path)
    if not isinstance(data, dict) or "config" not in data or "state_dict" not in data:
        kind = type(data).__name__ if not isinstance(data, dict) else f"a dict of {sorted(map(str, data))[:5]}"
        raise ModelLoadError(f"{path} is not a SimpleClick checkpoint ({{'config', 'state_dict'}}): it holds {kind}")
    try:
        cfg = config_from_checkpoint(data["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: {type(exc).__name__}: {exc}") from exc
    sd = data["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"{path}: its state_dict is not a mapping of tensors")
    sd = {k: v for k, v in sd.items() if not k.startswith(UNUSED_PREFIXES)}
    model = SimpleClickModel(cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"SimpleClick checkpoint {path} does not fit its own config: {exc}") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def describe(cfg: SimpleClickConfig) -> str:
    """One line naming the model (for logs)."""
    name: Optional[str] = cfg.variant
    return (f"SimpleClick {name or 'plain ViT'} (dim {cfg.embed_dim}, depth {cfg.depth}, heads {cfg.num_heads}, "
            f"patch {cfg.patch_size[0]}, trained at {cfg.img_size[0]}x{cfg.img_size[1]})")


def release_config(cfg: SimpleClickConfig) -> dict:
    """``cfg`` as SimpleClick's serialised constructor arguments (the ``config`` of its checkpoints), plain
    values only (the release's files also hold the head's loss object, which nothing here reads)."""
    def p(value) -> dict:
        return {"type": "builtin", "value": value, "specified": True}

    head = {"in_channels": list(cfg.head_in_channels), "in_index": list(cfg.head_in_index), "dropout_ratio": 0.1,
            "num_classes": cfg.head_num_classes, "align_corners": cfg.head_align_corners,
            "upsample": cfg.head_upsample, "channels": cfg.head_channels}
    if cfg.head_norm:
        head["norm_cfg"] = {"type": cfg.head_norm, "requires_grad": True}
    return {"class": "isegm.model.is_plainvit_model.PlainVitModel", "params": {
        "backbone_params": p({"img_size": tuple(cfg.img_size), "patch_size": tuple(cfg.patch_size),
                              "in_chans": cfg.in_chans, "embed_dim": cfg.embed_dim, "depth": cfg.depth,
                              "num_heads": cfg.num_heads, "mlp_ratio": cfg.mlp_ratio, "qkv_bias": cfg.qkv_bias}),
        "neck_params": p({"in_dim": cfg.embed_dim, "out_dims": list(cfg.neck_out_dims)}),
        "head_params": p(head),
        "random_split": p(False),
        "with_prev_mask": p(cfg.with_prev_mask), "use_disks": p(cfg.use_disks), "norm_radius": p(cfg.norm_radius),
        "norm_mean_std": p((list(cfg.norm_mean), list(cfg.norm_std))),
    }}


def save_simpleclick(model: SimpleClickModel, path: Union[str, Path]) -> Path:
    """Write ``model`` in the published checkpoints' layout, ``{'config': ..., 'state_dict': ...}`` (its
    position embedding at the training grid of ``cfg.img_size``, as trained): what ``load_simpleclick`` reads."""
    if model.backbone.grid_size != (model.cfg.img_size[0] // model.cfg.patch_size[0],
                                    model.cfg.img_size[1] // model.cfg.patch_size[1]):
        raise ValueError("the position embedding was resized for inference: save the model before using it")
    path = Path(path)
    torch.save({"config": release_config(model.cfg), "state_dict": model.state_dict()}, path)
    return path
