"""Tiny random SAM-family folders (``save_pretrained`` + a ``preprocessor_config.json``), for tests and benchmarks.

``make_tiny_family(folder, model_type, side=..., decoder="tiny"|"real")`` writes a click tool's folder (and
``make_tiny_sam3_text(folder)`` a SAM 3 text model's) that loads offline
through the production loader. Vision encoders are always shrunk (1-2 layers, <= 128 channels);
``decoder="real"`` keeps the real prompt encoder / mask decoder sizes (hidden 256, MLP 2048) so a click
costs what it costs with the released checkpoints.

The SAM 2-family processors (``Sam2ImageProcessor``, ``Sam3ImageProcessor``) cannot be built without
torchvision, so their ``preprocessor_config.json`` is written with the keys those classes save.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from segagent_backend.agent.segmenters.hf_sam_preprocess import IMAGENET_DEFAULT, IMAGENET_STANDARD

__all__ = ["make_tiny_family", "make_tiny_sam3_text", "TINY_MODEL_TYPES"]

#: the model types a tiny folder can be built for without timm (EdgeTAM's backbone is a timm model)
TINY_MODEL_TYPES = ("sam", "sam_hq", "sam2", "sam3_tracker")


def _decoder(real: bool) -> tuple[dict, dict]:
    """(prompt encoder, mask decoder) sizes: the real ones or tiny."""
    if real:
        return dict(hidden_size=256), dict(hidden_size=256, mlp_dim=2048, num_attention_heads=8,
                                           iou_head_hidden_dim=256)
    return dict(hidden_size=32), dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)


def _sam_config(model_type: str, side: int, real_decoder: bool) -> Any:
    from transformers import SamConfig, SamHQConfig

    prompt, decoder = _decoder(real_decoder)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, output_channels=prompt["hidden_size"],
                  global_attn_indexes=[1], window_size=4, image_size=side, patch_size=16, mlp_dim=64,
                  num_pos_feats=prompt["hidden_size"] // 2,
                  initializer_range=0.02)  # the default 1e-10 gives denormal floats: 30x slower CPU math
    prompt_cfg = dict(prompt, image_size=side, patch_size=16, mask_input_channels=16)
    if model_type == "sam_hq":
        return SamHQConfig(vision_config=vision, prompt_encoder_config=prompt_cfg,
                           mask_decoder_config=dict(decoder, vit_dim=vision["hidden_size"]))
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt_cfg, mask_decoder_config=decoder)


def _sam2_config(model_type: str, side: int, real_decoder: bool) -> Any:
    from transformers import Sam2Config, Sam3TrackerConfig

    prompt, decoder = _decoder(real_decoder)
    c = prompt["hidden_size"]
    if model_type == "sam2":  # Hiera: patch stride 4, three 2x query-pooling stages
        patch, grid = 16, side // 16
        backbone = dict(model_type="sam2_hiera_det_model", hidden_size=16, num_attention_heads=1,
                        image_size=[side, side],
                        blocks_per_stage=[1, 1, 2, 1], embed_dim_per_stage=[16, 32, 64, 128],
                        num_attention_heads_per_stage=[1, 1, 1, 1], window_size_per_stage=[4, 4, 4, 4],
                        global_attention_blocks=[3], window_positional_embedding_background_size=[4, 4])
        vision = dict(model_type="sam2_vision_model", backbone_config=backbone, fpn_hidden_size=c,
                      backbone_channel_list=[128, 64, 32, 16],
                      backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]])
        cls = Sam2Config
    else:  # SAM 3's ViT (patch 14) + its FPN at scales 4, 2, 1, 0.5
        patch, grid = 14, side // 14
        backbone = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, image_size=side, patch_size=14, window_size=4, global_attn_indexes=[1],
                        pretrain_image_size=side)
        vision = dict(model_type="sam3_vision_model", backbone_config=backbone, fpn_hidden_size=c,
                      backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]])
        cls = Sam3TrackerConfig
    return cls(vision_config=vision, prompt_encoder_config=dict(prompt, image_size=side, patch_size=patch),
               mask_decoder_config=decoder)


def _square_processor_config(model_type: str, side: int) -> dict:
    """What ``Sam2ImageProcessor`` / ``Sam3ImageProcessor.save_pretrained`` write (the keys we read)."""
    mean, std = IMAGENET_STANDARD if model_type == "sam3_tracker" else IMAGENET_DEFAULT
    return {
        "image_processor_type": "Sam3ImageProcessor" if model_type == "sam3_tracker" else "Sam2ImageProcessor",
        "processor_class": "Sam3TrackerProcessor" if model_type == "sam3_tracker" else "Sam2Processor",
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, "do_pad": None,
        "image_mean": list(mean), "image_std": list(std), "rescale_factor": 1 / 255, "resample": 2,
        "size": {"height": side, "width": side}, "mask_size": {"height": side // 4, "width": side // 4},
    }


def make_tiny_family(folder: Union[str, Path], model_type: str, *, side: int = 256, decoder: str = "tiny",
                     seed: int = 0) -> Path:
    """Save a random ``model_type`` model with input side ``side`` (a multiple of 16, or of 14 for
    ``sam3_tracker``) and its processor config into ``folder``; returns the folder."""
    import torch
    import transformers

    if model_type not in TINY_MODEL_TYPES:
        raise ValueError(f"no tiny {model_type!r}: use one of {', '.join(TINY_MODEL_TYPES)}")
    real = decoder == "real"
    config = (_sam_config if model_type in ("sam", "sam_hq") else _sam2_config)(model_type, side, real)
    model_class = {"sam": "SamModel", "sam_hq": "SamHQModel", "sam2": "Sam2Model",
                   "sam3_tracker": "Sam3TrackerModel"}[model_type]
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    if model_type in ("sam", "sam_hq"):
        from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

        image_processor = SamImageProcessorPil(size={"longest_edge": side}, pad_size={"height": side, "width": side},
                                               mask_size={"longest_edge": side // 4},
                                               mask_pad_size={"height": side // 4, "width": side // 4})
        processor_class = transformers.SamHQProcessor if model_type == "sam_hq" else transformers.SamProcessor
        processor_class(image_processor=image_processor).save_pretrained(folder)
    else:
        config_json = json.dumps(_square_processor_config(model_type, side), indent=2)
        (folder / "preprocessor_config.json").write_text(config_json)
    return folder


def make_tiny_sam3_text(folder: Union[str, Path], side: int = 112, queries: int = 8, seed: int = 0) -> Path:
    """Save a tiny random ``Sam3Model`` (SAM 3 text -> instances) with a CLIP tokenizer and the
    ``preprocessor_config.json`` keys ``Sam3ImageProcessor`` writes (it cannot be built without torchvision).

    ``side``: the input side (a multiple of 14); ``queries``: DETR queries, i.e. instances at most. The
    tokenizer's vocabulary is the 256 byte symbols (alone and word-final) and CLIP's two specials, no merges:
    every word is spelled letter by letter, so any text round-trips through it.
    """
    import torch
    from transformers import CLIPTokenizer, Sam3Config, Sam3Model
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    start, end = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": start, "<|endoftext|>": end})
    grid = side // 14
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    config = Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, image_size=side, patch_size=14, window_size=4,
                                 global_attn_indexes=[1], pretrain_image_size=side),
            fpn_hidden_size=32, backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]]),
        text_config=dict(model_type="clip_text_model", vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         projection_dim=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         bos_token_id=start, eos_token_id=end, pad_token_id=end),
        geometry_encoder_config=dict(small, num_layers=1), detr_encoder_config=dict(small, num_layers=1),
        detr_decoder_config=dict(small, num_layers=1, num_queries=queries),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2))
    torch.manual_seed(seed)
    folder = Path(folder)
    Sam3Model(config).eval().save_pretrained(folder)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    processor = {"image_processor_type": "Sam3ImageProcessor", "processor_class": "Sam3Processor",
                 "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255,
                 "resample": 2, "size": {"height": side, "width": side}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return folder
