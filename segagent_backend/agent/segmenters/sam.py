"""SAM (Meta's ``segment-anything`` package, ``.pth`` checkpoints vit_b / vit_l / vit_h) as a Segmenter.

The architecture is read off the checkpoint's tensors (:func:`infer_sam_architecture`) rather than
taken from a name, so one loader serves the official checkpoints and the tiny random models the
tests save; ``model_type`` only double-checks what was inferred.

The image encoder runs once per image (``_encode``); a click runs only the prompt encoder and the
mask decoder on the cached features, and only the chosen mask is upscaled to the original size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch

from ..loading import ModelLoadError, checkpoint_file, resolve_device
from .cache import EmbeddingCache
from .prompted import PromptedSegmenter, SamEmbedding

if TYPE_CHECKING:  # segment_anything needs torchvision at import time: import it lazily
    from segment_anything import SamPredictor
    from segment_anything.modeling import Sam

__all__ = [
    "ModelLoadError", "SamArchitecture", "SamEmbedding", "SamSegmenter",
    "import_segment_anything", "infer_sam_architecture", "load_sam", "resolve_device",
]

#: the official variants: (embed_dim, depth, num_heads, global_attn_indexes)
KNOWN_MODEL_TYPES: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
KNOWN_MODEL_TYPES["default"] = KNOWN_MODEL_TYPES["vit_h"]  # segment_anything's own alias

#: the mask decoder's head count is not visible in any tensor shape; every SAM variant uses 8
DECODER_NUM_HEADS = 8


def import_segment_anything():
    """``import segment_anything`` with an actionable error when torchvision is missing or broken."""
    try:
        import segment_anything
    except ImportError as exc:
        if "torchvision" in str(exc) or (getattr(exc, "name", "") or "").startswith("torchvision"):
            raise ImportError(
                "segment-anything needs torchvision at import time and none is importable: install the "
                f"torchvision build that matches torch {torch.__version__} (GPU images ship it; on a CPU-only "
                f"machine without a matching build use the transformers SAM backend instead). Cause: {exc}"
            ) from exc
        raise ImportError(f"segment-anything is not installed (pip install segment-anything): {exc}") from exc
    except Exception as exc:  # e.g. a CUDA torchvision on CPU torch: "operator torchvision::nms does not exist"
        raise ImportError(
            f"torchvision is installed but failed to import ({type(exc).__name__}: {exc}); it must be the "
            f"build matching torch {torch.__version__}"
        ) from exc
    return segment_anything


@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters of a segment_anything ``Sam``, as read from its state dict."""

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    window_size: int
    global_attn_indexes: tuple[int, ...]
    use_abs_pos: bool
    qkv_bias: bool
    prompt_dim: int  # = encoder out_chans = decoder transformer_dim
    mask_in_chans: int
    num_multimask_outputs: int
    decoder_depth: int
    decoder_mlp_dim: int
    attention_downsample_rate: int
    iou_head_depth: int
    iou_head_hidden_dim: int

    @property
    def model_type(self) -> Optional[str]:
        """vit_b / vit_l / vit_h when the encoder matches an official variant, else None."""
        enc = (self.embed_dim, self.depth, self.num_heads, self.global_attn_indexes)
        return next((k for k, v in KNOWN_MODEL_TYPES.items() if v == enc and k != "default"), None)


def _count(sd: dict, prefix: str) -> int:
    """Number of ``prefix{i}.`` sub-modules in a state dict (prefix ends with '.')."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def infer_sam_architecture(sd: dict) -> SamArchitecture:
    """Read a ``SamArchitecture`` off the tensor shapes of a segment_anything Sam state dict.

    Raises KeyError/ValueError when ``sd`` is not one (the loader turns that into ModelLoadError).
    """
    enc = "image_encoder."
    embed_dim, _, patch, _ = sd[enc + "patch_embed.proj.weight"].shape
    depth = _count(sd, enc + "blocks.")
    if depth == 0 or enc + "blocks.0.attn.rel_pos_h" not in sd:
        raise ValueError("no ViT blocks with relative position tables under image_encoder.")
    # rel_pos_h is (2 * side - 1, head_dim): side = window size, or the token grid for global blocks
    sides = [(sd[f"{enc}blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2 for i in range(depth)]
    head_dim = sd[enc + "blocks.0.attn.rel_pos_h"].shape[1]
    if enc + "pos_embed" in sd:
        grid = sd[enc + "pos_embed"].shape[1]
    else:
        grid = max(sides)
    global_idx = tuple(i for i, s in enumerate(sides) if s == grid)
    windowed = {s for s in sides if s != grid}
    if len(windowed) > 1:
        raise ValueError(f"inconsistent window sizes {sorted(windowed)}")
    window = windowed.pop() if windowed else 0
    dec = "mask_decoder."
    prompt_dim = sd[dec + "iou_token.weight"].shape[1]
    iou_depth = _count(sd, dec + "iou_prediction_head.layers.")
    return SamArchitecture(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        mlp_ratio=sd[enc + "blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        window_size=window,
        global_attn_indexes=global_idx,
        use_abs_pos=enc + "pos_embed" in sd,
        qkv_bias=enc + "blocks.0.attn.qkv.bias" in sd,
        prompt_dim=prompt_dim,
        mask_in_chans=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        num_multimask_outputs=sd[dec + "mask_tokens.weight"].shape[0] - 1,
        decoder_depth=_count(sd, dec + "transformer.layers."),
        decoder_mlp_dim=sd[dec + "transformer.layers.0.mlp.lin1.weight"].shape[0],
        attention_downsample_rate=prompt_dim // sd[dec + "transformer.final_attn_token_to_image.q_proj.weight"].shape[0],
        iou_head_depth=iou_depth,
        iou_head_hidden_dim=sd[dec + "iou_prediction_head.layers.0.weight"].shape[0],
    )


def build_sam(arch: SamArchitecture) -> "Sam":
    """An untrained segment_anything ``Sam`` with the given hyper-parameters."""
    import_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.img_size // arch.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depth=arch.depth,
            num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, out_chans=arch.prompt_dim, qkv_bias=arch.qkv_bias,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_abs_pos=arch.use_abs_pos, use_rel_pos=True,
            window_size=arch.window_size, global_attn_indexes=arch.global_attn_indexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(arch.img_size, arch.img_size), mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth, embedding_dim=arch.prompt_dim, mlp_dim=arch.decoder_mlp_dim,
                num_heads=DECODER_NUM_HEADS, attention_downsample_rate=arch.attention_downsample_rate,
            ),
            transformer_dim=arch.prompt_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
    )


def load_sam(checkpoint: Union[str, Path], model_type: Optional[str] = None, device: str = "auto") -> "Sam":
    """Load a segment_anything ``.pth`` checkpoint (a state dict) into a ``Sam`` in eval mode on ``device``.

    ``model_type`` (vit_b / vit_l / vit_h / default, or None to accept any SAM ViT) must match the
    architecture inferred from the tensors. Raises ModelLoadError naming the checkpoint otherwise,
    and when the file is missing or unreadable; ImportError when segment_anything cannot be imported.
    """
    path = Path(checkpoint)
    if model_type is not None and model_type not in KNOWN_MODEL_TYPES:
        raise ModelLoadError(f"unknown SAM model_type {model_type!r} for {path}: use one of {sorted(KNOWN_MODEL_TYPES)}")
    dev = resolve_device(device)
    checkpoint_file(path, "SAM checkpoint")
    try:
        # weights_only: a checkpoint is data, never code to unpickle
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"SAM checkpoint {path} is unreadable: {type(exc).__name__}: {exc}") from exc
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):  # some training scripts wrap the weights
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"SAM checkpoint {path} holds a {type(sd).__name__}, not a state dict")
    try:
        arch = infer_sam_architecture(sd)
    except (KeyError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise ModelLoadError(f"{path} is not a segment-anything SAM checkpoint ({type(exc).__name__}: {exc})") from exc
    if model_type is not None:
        want = KNOWN_MODEL_TYPES[model_type]
        got = (arch.embed_dim, arch.depth, arch.num_heads, arch.global_attn_indexes)
        if got != want:
            raise ModelLoadError(
                f"SAM checkpoint {path} is not {model_type}: it has embed_dim={got[0]}, depth={got[1]}, "
                f"num_heads={got[2]}, global_attn_indexes={got[3]} ({arch.model_type or 'no official variant'}); "
                f"{model_type} has embed_dim={want[0]}, depth={want[1]}, num_heads={want[2]}, "
                f"global_attn_indexes={want[3]}"
            )
    model = build_sam(arch)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"SAM checkpoint {path} does not fit the inferred architecture: {exc}") from exc
    return model.to(dev).eval()


class SamSegmenter(PromptedSegmenter):
    """segment-anything SAM (see :class:`PromptedSegmenter` for what ``segment`` returns)."""

    def __init__(self, model: "Sam", cache: Optional[EmbeddingCache] = None, namespace: Optional[str] = None):
        """``model``: a loaded Sam (see :func:`load_sam`). ``namespace`` keys this model's cache entries
        (default: unique to this model object)."""
        super().__init__(cache)
        predictor_cls = import_segment_anything().SamPredictor
        self.model = model
        self.predictor: "SamPredictor" = predictor_cls(model)
        self.cache_namespace = namespace or f"sam:{id(model)}"
        with torch.inference_mode():
            # constant for a model: computed once instead of on every click
            self._dense_pe = model.prompt_encoder.get_dense_pe()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Union[str, Path],
        model_type: Optional[str] = None,
        device: str = "auto",
        cache: Optional[EmbeddingCache] = None,
    ) -> "SamSegmenter":
        """Load ``checkpoint`` with :func:`load_sam`; cache entries are keyed by the checkpoint path."""
        model = load_sam(checkpoint, model_type, device)
        return cls(model, cache, namespace=f"sam:{Path(checkpoint).resolve()}")

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return tuple(self.model.prompt_encoder.mask_input_size)

    @property
    def input_side(self) -> int:
        """The encoder's square input (``ResizeLongestSide`` to it, then padded bottom/right)."""
        return int(self.model.image_encoder.img_size)

    def _encode(self, image: np.ndarray) -> tuple[SamEmbedding, int]:
        with torch.inference_mode():
            self.predictor.set_image(image, image_format="RGB")
        emb = SamEmbedding(
            features=self.predictor.features,
            original_size=tuple(int(v) for v in image.shape[:2]),
            input_size=tuple(int(v) for v in self.predictor.input_size),
        )
        return emb, emb.nbytes

    def _use(self, embedding: object, image: np.ndarray) -> None:
        super()._use(embedding, image)
        # restore exactly the state SamPredictor.set_image leaves, without running the encoder
        p = self.predictor
        p.features = embedding.features
        p.original_size = embedding.original_size
        p.input_size = embedding.input_size
        p.is_image_set = True

    def _decode(self, emb, xy, labels, xyxy, prev):
        dev = self.device
        transform = self.predictor.transform  # original pixels -> the resized input frame
        points = boxes = masks = None
        if len(xy):
            points = (
                torch.as_tensor(transform.apply_coords(xy, emb.original_size), dtype=torch.float32, device=dev)[None],
                torch.as_tensor(labels, dtype=torch.int, device=dev)[None],
            )  # (1, N, 2) x, y and (1, N)
        if xyxy is not None:
            boxes = torch.as_tensor(transform.apply_boxes(xyxy[None], emb.original_size), dtype=torch.float32,
                                    device=dev)  # (1, 4)
        if prev is not None:
            masks = torch.as_tensor(prev, device=dev)[None]  # (1, 1, 256, 256)
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=emb.features,
            image_pe=self._dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )  # low_res (1, K, 256, 256) logits, iou (1, K)
        return low_res, iou[0]

    def _upscale(self, emb, chosen):
        full = self.model.postprocess_masks(chosen, emb.input_size, emb.original_size)
        return (full[0, 0] > self.model.mask_threshold).cpu().numpy()
