"""SAM 3's text prompt (transformers ``Sam3Model``): a noun phrase -> every instance of it in an image.

The stock ``Sam3Processor`` needs torchvision, so the image goes through our own square preprocessing
(``segmenters.hf_sam_preprocess``, from the model's ``preprocessor_config.json``) and the outputs through
:func:`instances_from_outputs`, which computes what ``Sam3ImageProcessor.post_process_instance_segmentation``
does: score = sigmoid(query logit) * sigmoid(presence logit), kept above a threshold, mask probabilities
resized bilinearly to the image and cut at 0.5. The text is tokenized as ``Sam3Processor`` does it
(padded to 32 tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..loading import ModelLoadError, resolve_checkpoint, resolve_device
from ..segmenters.cache import EmbeddingCache, image_digest
from ..segmenters.hf_sam_models import processor_config, read_model_type
from ..segmenters.hf_sam_preprocess import IMAGENET_STANDARD, ImagePreprocessor, OwnPreprocessor, PreprocessSpec

__all__ = ["Instance", "TextGrounder", "instances_from_outputs", "TEXT_LENGTH", "MASK_THRESHOLD", "TEXT_MODEL_TYPES"]

TEXT_LENGTH = 32  # Sam3Processor pads every prompt to 32 tokens (the text encoder's positions)
MASK_THRESHOLD = 0.5  # post_process_instance_segmentation's mask_threshold
TEXT_MODEL_TYPES = ("sam3", "sam3_video")  # a SAM 3 detector alone, or inside the image + video checkpoint


@dataclass(frozen=True)
class Instance:
    """One instance SAM 3 found: ``mask`` (H, W) bool at the image's size, ``score`` in [0, 1]."""

    mask: np.ndarray
    score: float


def instances_from_outputs(pred_logits: torch.Tensor, presence_logits: Optional[torch.Tensor], pred_masks: torch.Tensor,
                           size: tuple[int, int], threshold: float, limit: Optional[int] = None) -> list[Instance]:
    """One image's ``Sam3Model`` outputs -> its instances scoring above ``threshold``, best first, the best
    ``limit`` at most (only those are resized, one at a time: float maps of a large image are big).

    pred_logits: (Q,) query logits; presence_logits: (1,) or None; pred_masks: (Q, h, w) mask logits;
    size: (H, W) of the image. A query whose mask is empty at the image's size is no instance.
    """
    scores = pred_logits.float().sigmoid()
    if presence_logits is not None:
        scores = scores * presence_logits.float().sigmoid()
    keep = torch.nonzero(scores > threshold).flatten()
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)][:limit]
    instances = []
    for q in keep.tolist():
        probability = F.interpolate(pred_masks[q].float().sigmoid()[None, None], size=tuple(size), mode="bilinear",
                                    align_corners=False)[0, 0]
        mask = (probability > MASK_THRESHOLD).cpu().numpy()
        if mask.any():
            instances.append(Instance(mask, float(scores[q])))
    return instances


class TextGrounder:
    """A loaded ``Sam3Model`` with its tokenizer and preprocessing. Not thread-safe: callers serialise.

    The vision encoder's FPN features of an image are kept in ``cache`` (the shared byte-bounded one,
    keyed by image content): the encoder is ~90 % of a call (bench/text_start.py), and another phrase on
    the same image (another task, a re-run) then costs only the text encoder, DETR and mask decoder.
    """

    def __init__(self, model: Any, tokenizer: Any, preprocessor: ImagePreprocessor,
                 cache: Optional[EmbeddingCache] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        self.cache = cache if cache is not None else EmbeddingCache(0)
        self._namespace = f"sam3-text:{id(model)}"
        self._positions: Optional[tuple[torch.Tensor, ...]] = None  # FPN position encodings: the same for every image

    @classmethod
    def from_pretrained(cls, checkpoint: Union[str, Path], device: str = "auto",
                        cache: Optional[EmbeddingCache] = None) -> "TextGrounder":
        """Load a ``Sam3Model`` (``config.model_type`` ``sam3``, or ``sam3_video`` as facebook/sam3 is: its
        detector) from a folder or hub id, with its tokenizer. ModelLoadError naming SEGAGENT_TEXT_MODEL and
        the reason when it cannot."""
        import transformers

        src = resolve_checkpoint(checkpoint, "SAM 3 text model folder (SEGAGENT_TEXT_MODEL)")
        model_type = read_model_type(src)
        if model_type not in TEXT_MODEL_TYPES:  # facebook/sam3 is `sam3_video`: Sam3Model takes its detector
            raise ModelLoadError(f"SEGAGENT_TEXT_MODEL={src} has config.model_type {model_type!r}: a SAM 3 text "
                                 f"model ({' or '.join(TEXT_MODEL_TYPES)}, e.g. facebook/sam3) is needed")
        try:
            model = transformers.Sam3Model.from_pretrained(src)
            tokenizer = transformers.AutoTokenizer.from_pretrained(src)
            spec = PreprocessSpec.from_config(processor_config(src), square=True, side=int(model.config.image_size),
                                              defaults=IMAGENET_STANDARD)
        except Exception as exc:
            raise ModelLoadError(f"SEGAGENT_TEXT_MODEL={src} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        return cls(model.to(resolve_device(device)).eval(), tokenizer, OwnPreprocessor(spec), cache)

    def instances(self, image: np.ndarray, phrase: str, threshold: float,
                  limit: Optional[int] = None) -> list[Instance]:
        """Every instance of ``phrase`` in ``image`` ((H, W, 3) uint8 RGB) scoring above ``threshold``, best
        first, the best ``limit`` at most (possibly none)."""
        device = self.model.device
        text = self.tokenizer(phrase, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                              return_tensors="pt")
        with torch.inference_mode():
            out = self.model(vision_embeds=self.vision_features(image), input_ids=text["input_ids"].to(device),
                             attention_mask=text["attention_mask"].to(device))
        presence = out.presence_logits[0] if out.presence_logits is not None else None
        return instances_from_outputs(out.pred_logits[0], presence, out.pred_masks[0], image.shape[:2], threshold,
                                      limit)

    def vision_features(self, image: np.ndarray) -> Any:
        """The ``Sam3VisionEncoderOutput`` of ``image`` ((H, W, 3) uint8 RGB): from the cache, else encoded."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        key = (self._namespace, image_digest(image))
        levels = self.cache.get(key)
        if levels is None or self._positions is None:
            pixels = self.preprocessor(image).pixel_values.to(self.model.device, self.model.dtype)
            with torch.inference_mode():
                encoded = self.model.get_vision_features(pixel_values=pixels)
            levels, self._positions = tuple(encoded.fpn_hidden_states), tuple(encoded.fpn_position_encoding)
            self.cache.put(key, levels, sum(t.element_size() * t.nelement() for t in levels))
        return Sam3VisionEncoderOutput(fpn_hidden_states=levels, fpn_position_encoding=self._positions)
