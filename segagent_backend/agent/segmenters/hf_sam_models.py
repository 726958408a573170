"""The transformers SAM family, one adapter per ``config.model_type``: which class to load, how its image
embeddings are computed and cached, how its prompt encoder + mask decoder are called.

| model_type     | class              | image embeddings (cached)                         | preprocessing          |
|----------------|--------------------|---------------------------------------------------|------------------------|
| `sam`          | `SamModel`         | (1, C, 64, 64)                                    | stock `SamProcessor`   |
| `sam_hq`       | `SamHQModel`       | (1, C, 64, 64) + the first ViT global-attention   | stock `SamHQProcessor` |
|                |                    | layer's output (1, 64, 64, D) (the HQ decoder's)  |                        |
| `sam2`         | `Sam2Model`        | [(1, C/8, 4h, 4w), (1, C/4, 2h, 2w), (1, C, h, w)] | own, square resize     |
| `sam3_tracker` | `Sam3TrackerModel` | as `sam2` (h = w = 72 at 1008 input)              | own, square resize     |
| `edgetam`      | `EdgeTamModel`     | as `sam2`; needs timm (hence torchvision)         | own, square resize     |

Points given to :func:`decode` are (x, y) in the model's input frame (see
``ImagePreprocessor.to_input_frame``), labels 1 (positive) / 0 (negative), the box XYXY in the same
frame, the mask input the previous call's low-res logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..loading import ModelLoadError, is_local_path
from .hf_sam_preprocess import (IMAGENET_DEFAULT, IMAGENET_STANDARD, ImagePreprocessor, OwnPreprocessor,
                                PreprocessSpec, StockPreprocessor)

__all__ = ["SamFamily", "FAMILIES", "SUPPORTED_MODEL_TYPES", "family_of", "read_model_type", "processor_config",
           "load_family", "encode", "decode", "mask_input_size", "checkpoint_key"]


@dataclass(frozen=True)
class SamFamily:
    """One supported ``model_type``.

    model_class:     the transformers class name.
    stock_processor: the processor class that runs without torchvision (used as is), or None (own
                     preprocessing from ``preprocessor_config.json``).
    square:          SAM 2-style square resize without padding (else longest side + pad).
    side:            the default input side; mean_std: the default normalisation.
    multilevel:      embeddings are SAM 2's three feature levels (else one tensor, + one ViT layer for HQ).
    needs_timm:      the vision backbone is a timm model.
    """

    model_type: str
    model_class: str
    stock_processor: Optional[str]
    square: bool
    side: int
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_DEFAULT
    multilevel: bool = False
    needs_timm: bool = False


FAMILIES: dict[str, SamFamily] = {f.model_type: f for f in (
    SamFamily("sam", "SamModel", "SamProcessor", square=False, side=1024),
    SamFamily("sam_hq", "SamHQModel", "SamHQProcessor", square=False, side=1024),
    SamFamily("sam2", "Sam2Model", None, square=True, side=1024, multilevel=True),
    SamFamily("sam3_tracker", "Sam3TrackerModel", None, square=True, side=1008, mean_std=IMAGENET_STANDARD,
              multilevel=True),
    SamFamily("edgetam", "EdgeTamModel", None, square=True, side=1024, multilevel=True, needs_timm=True),
)}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(FAMILIES)


def family_of(model_type: Optional[str], checkpoint: str = "") -> SamFamily:
    """The adapter for ``model_type``; ModelLoadError naming SEGAGENT_SAM_MODEL and the supported types."""
    family = FAMILIES.get(model_type or "")
    if family is None:
        hint = (" (a SAM 3 text / video checkpoint is no click tool: use a `sam3_tracker` one here, and give this"
                " one to SEGAGENT_TEXT_MODEL for text)" if model_type in ("sam3", "sam3_video") else "")
        raise ModelLoadError(
            f"SEGAGENT_SAM_MODEL={checkpoint or '?'} has config.model_type {model_type!r}, not a supported SAM{hint}; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return family


def read_model_type(checkpoint: str) -> str:
    """``config.model_type`` of a folder or hub id (``config.json`` only; nothing is built)."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(checkpoint)
    except Exception as exc:  # OSError (missing files, offline), JSONDecodeError, ...
        raise ModelLoadError(f"cannot read the SAM config of {checkpoint}: {type(exc).__name__}: {exc}") from exc
    return str(config.get("model_type"))


def processor_config(checkpoint: str) -> dict:
    """``preprocessor_config.json`` of ``checkpoint`` as a dict ({} when there is none: the family's defaults apply)."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        config, _ = ImageProcessingMixin.get_image_processor_dict(checkpoint)
    except OSError:
        return {}
    return dict(config)


def load_family(checkpoint: str, device: torch.device) -> tuple[Any, SamFamily, ImagePreprocessor]:
    """Load the model ``checkpoint`` names (eval mode, on ``device``), its adapter and its preprocessor.

    The class is picked by ``config.model_type``. Raises ModelLoadError naming ``checkpoint`` and the reason.
    """
    import transformers

    family = family_of(read_model_type(checkpoint), checkpoint)
    if family.needs_timm and not transformers.utils.is_timm_available():
        raise ModelLoadError(
            f"SEGAGENT_SAM_MODEL={checkpoint} is an {family.model_type} model: its vision backbone is a timm model, "
            "and timm (which needs torchvision) is not installed here; install timm and torchvision, or use "
            f"another of: {', '.join(t for t in SUPPORTED_MODEL_TYPES if t != family.model_type)}")
    model_class = getattr(transformers, family.model_class, None)
    if model_class is None:
        raise ModelLoadError(f"transformers {transformers.__version__} has no {family.model_class} "
                             f"(needed for model_type {family.model_type!r} of {checkpoint})")
    try:
        model = model_class.from_pretrained(checkpoint)
    except Exception as exc:
        raise ModelLoadError(f"cannot load a {family.model_class} from {checkpoint}: "
                             f"{type(exc).__name__}: {exc}") from exc
    try:
        spec = PreprocessSpec.from_config(processor_config(checkpoint), square=family.square,
                                          side=model_side(model, family), defaults=family.mean_std)
    except ValueError as exc:
        raise ModelLoadError(f"the image processor config of {checkpoint} cannot be used: {exc}") from exc
    if family.stock_processor is not None:
        try:
            processor = getattr(transformers, family.stock_processor).from_pretrained(checkpoint)
        except Exception as exc:
            raise ModelLoadError(f"cannot load a {family.stock_processor} from {checkpoint}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        preprocessor: ImagePreprocessor = StockPreprocessor(processor, spec)
    else:
        preprocessor = OwnPreprocessor(spec)
    return model.to(device).eval(), family, preprocessor


def model_side(model: Any, family: SamFamily) -> int:
    side = getattr(model.config.prompt_encoder_config, "image_size", family.side)
    return int(side[0] if isinstance(side, (list, tuple)) else side)


def mask_input_size(model: Any, family: SamFamily) -> tuple[int, int]:
    """(h, w) of the low-res logits the decoder returns and takes back as mask input (4x the embedding grid:
    256 x 256 at 1024 input, 288 x 288 for SAM 3 at 1008)."""
    if family.multilevel:
        return tuple(int(v) for v in model.prompt_encoder.mask_input_size)
    side = 4 * int(model.config.prompt_encoder_config.image_embedding_size)
    return side, side


def encode(model: Any, family: SamFamily, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The vision encoder on (1, 3, h, w) pixel values -> what :func:`decode` needs, to be cached.

    sam: (embeddings,); sam_hq: (embeddings, first global-attention ViT layer (1, 64, 64, D));
    multilevel: (level 0, level 1, embeddings) as ``get_image_embeddings`` returns them.
    """
    with torch.inference_mode():
        if family.model_type == "sam_hq":
            embeddings, intermediate = model.get_image_embeddings(pixel_values)
            return embeddings, intermediate[0]  # the HQ decoder reads only the first
        out = model.get_image_embeddings(pixel_values)
    return tuple(out) if family.multilevel else (out,)


def decode(model: Any, family: SamFamily, features: Sequence[torch.Tensor], points: Optional[torch.Tensor],
           labels: Optional[torch.Tensor], box: Optional[torch.Tensor], mask_input: Optional[torch.Tensor],
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt encoder + mask decoder, multimask output.

    points: (1, 1, N, 2) x, y in the input frame (model dtype); labels: (1, 1, N) int64, 1 / 0;
    box: (1, 1, 4) XYXY in the input frame; mask_input: (1, 1, h, w) previous low-res logits.
    Returns (candidate logits (1, K, h, w), predicted IoUs (K,)), K = 3.
    """
    kwargs: dict[str, Any] = {}
    if points is not None:
        kwargs["input_points"], kwargs["input_labels"] = points, labels
    if box is not None:
        kwargs["input_boxes"] = box
    if mask_input is not None:
        kwargs["input_masks"] = mask_input
    if family.model_type == "sam_hq":
        kwargs["intermediate_embeddings"] = [features[1]]
        embeddings: Any = features[0]
    elif family.multilevel:
        embeddings = list(features)
    else:
        embeddings = features[0]
    out = model(image_embeddings=embeddings, multimask_output=True, **kwargs)
    return out.pred_masks[0], out.iou_scores[0, 0]


def checkpoint_key(checkpoint: str) -> str:
    """The cache namespace part of a checkpoint: the resolved folder, or the hub id."""
    return str(Path(checkpoint).expanduser().resolve()) if is_local_path(checkpoint) else checkpoint
