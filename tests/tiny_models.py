"""Tiny random models of the real SAM architectures, for tests and benchmarks (no downloads).

Plain functions (no pytest fixtures) so any test file or script can reuse them. Every model is
saved in its production format (a ``.pth`` state dict, or a ``save_pretrained`` folder) and is
meant to be loaded back through the production loaders, so the tests exercise the real load path.

segment_anything and torchvision
--------------------------------
``import segment_anything`` imports ``resize`` / ``to_pil_image`` from
``torchvision.transforms.functional`` and ``batched_nms`` / ``box_area`` from
``torchvision.ops.boxes``. The CPU test machines have no usable torchvision (the only build on the
index is a CUDA one that fails to import on CPU torch), so :func:`torchvision_standin` puts a
minimal stand-in into ``sys.modules`` for the duration of that one import and REMOVES it again.
Leaving it there would break every later ``import transformers...``: transformers probes
``importlib.util.find_spec("torchvision")``, which raises ``ValueError: torchvision.__spec__ is
None`` for a module object created by hand. segment_anything keeps its own references to the
stand-in functions, so SamPredictor keeps working after the stand-in is gone.
"""
from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Iterator, Union

import numpy as np

PathLike = Union[str, Path]

_STANDIN_NAMES = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.ops.boxes",
)


def _resize(image, size):
    """torchvision's ``resize`` for a PIL image and ``size`` = (h, w): bilinear, as torchvision."""
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    return image.resize((w, h), Image.BILINEAR)  # PIL takes (width, height)


def _to_pil_image(array):
    """torchvision's ``to_pil_image`` for an (H, W, 3) uint8 numpy array."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(array))


def _box_area(boxes):
    """Areas of XYXY boxes, (N, 4) tensor -> (N,)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _batched_nms(boxes, scores, idxs, iou_threshold):
    """Greedy per-class NMS (only the automatic mask generator uses it); returns kept indices."""
    import torch

    order = torch.argsort(scores, descending=True)
    keep: list[int] = []
    for i in order.tolist():
        ok = True
        for j in keep:
            if idxs[i] != idxs[j]:
                continue
            lt = torch.maximum(boxes[i, :2], boxes[j, :2])
            rb = torch.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = (rb - lt).clamp(min=0).prod()
            union = _box_area(boxes[i : i + 1])[0] + _box_area(boxes[j : j + 1])[0] - inter
            if float(inter / union) > iou_threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return torch.as_tensor(keep, dtype=torch.long)


@contextlib.contextmanager
def torchvision_standin() -> Iterator[None]:
    """Provide a stand-in ``torchvision`` while the body runs (meant for ``import segment_anything``).

    Does nothing when segment_anything is already imported or a real torchvision is loaded.
    On exit every ``torchvision*`` module the stand-in added is removed from ``sys.modules``
    (see the module docstring for why that matters).
    """
    if "segment_anything" in sys.modules or "torchvision" in sys.modules:
        yield
        return
    mods = {name: types.ModuleType(name) for name in _STANDIN_NAMES}
    mods["torchvision.transforms.functional"].resize = _resize
    mods["torchvision.transforms.functional"].to_pil_image = _to_pil_image
    mods["torchvision.ops.boxes"].batched_nms = _batched_nms
    mods["torchvision.ops.boxes"].box_area = _box_area
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision"].ops = mods["torchvision.ops"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name, mod in mods.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]


def import_segment_anything():
    """The production :func:`segagent_backend.agent.segmenters.sam.import_segment_anything`, run through
    :func:`torchvision_standin`; returns the module."""
    from segagent_backend.agent.segmenters.sam import import_segment_anything as production_import

    with torchvision_standin():
        return production_import()


def _build_sam(
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
    prompt_dim: int,
    decoder_mlp_dim: int,
    iou_hidden: int,
    img_size: int = 1024,
    seed: int = 0,
):
    """A randomly initialised segment_anything ``Sam``: the production ``build_sam`` of a ``SamArchitecture``.

    The other hyper-parameters are segment_anything's (patch 16, MLP ratio 4, window 14, absolute positions,
    qkv bias, 16 mask channels, 3 multimask outputs, a 2-layer decoder, a 3-layer IoU head).
    """
    import torch

    from segagent_backend.agent.segmenters.sam import SamArchitecture, build_sam

    import_segment_anything()
    arch = SamArchitecture(
        img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4,
        window_size=14, global_attn_indexes=tuple(global_attn_indexes), use_abs_pos=True, qkv_bias=True,
        prompt_dim=prompt_dim, mask_in_chans=16, num_multimask_outputs=3, decoder_depth=2,
        decoder_mlp_dim=decoder_mlp_dim, attention_downsample_rate=2, iou_head_depth=3,
        iou_head_hidden_dim=iou_hidden,
    )
    torch.manual_seed(seed)
    sam = build_sam(arch)
    # Random rel-pos tables (SAM zero-initialises them) so a wrongly inferred head split shows.
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.02)
    return sam.eval()


def make_tiny_sam_checkpoint(path: PathLike) -> Path:
    """Save a tiny random segment_anything Sam as a ``.pth`` state dict; returns the path.

    img_size 1024 (patch 16 -> 64x64 embedding, 256x256 low-res masks, as the real models),
    ViT embed_dim 32, depth 2, 2 heads, block 1 global; prompt/decoder dim 64 (not the real 256,
    so the loader must infer it).
    """
    import torch

    sam = _build_sam(
        embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
        prompt_dim=64, decoder_mlp_dim=128, iou_hidden=64,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def make_vit_b_checkpoint(path: PathLike) -> Path:
    """Save the real vit_b architecture with random weights (~375 MB); returns the path."""
    import torch

    sam = _build_sam(
        embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11),
        prompt_dim=256, decoder_mlp_dim=2048, iou_hidden=256,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def make_tiny_hf_sam(folder: PathLike) -> Path:
    """Save a tiny transformers ``SamModel`` + ``SamProcessor`` with ``save_pretrained``.

    The folder loads offline with ``SamModel.from_pretrained`` / ``SamProcessor.from_pretrained``.
    Image size 1024, patch 16 (so the low-res masks are 256x256 as in the real models).
    """
    import torch
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    config = SamConfig(
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, output_channels=64,
            global_attn_indexes=[1], window_size=14, image_size=1024, patch_size=16, mlp_dim=64,
            num_pos_feats=32,  # positional features = prompt hidden size / 2
            initializer_range=0.02,  # the default 1e-10 gives denormal floats: 30x slower CPU math
        ),
        prompt_encoder_config=dict(hidden_size=64, image_size=1024, patch_size=16, mask_input_channels=16),
        mask_decoder_config=dict(hidden_size=64, mlp_dim=128, num_attention_heads=8, iou_head_hidden_dim=64),
    )
    torch.manual_seed(0)
    model = SamModel(config).eval()
    processor = SamProcessor(image_processor=SamImageProcessorPil())
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

