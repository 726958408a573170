"""Tiny random image-text-to-text chat models (Qwen2-VL, Qwen2.5-VL, LLaVA) for tests and benchmarks.

Plain functions, no fixtures. Each ``make_tiny_*`` writes a folder laid out like a real checkpoint
(``save_pretrained`` of the model and of the processor: config, safetensors, tokenizer files,
image-processor config, chat template) and returns its path, so tests load it back through the
production loader :func:`segagent_backend.agent.policies.hf_vlm.load_hf_vlm`.

Offline by construction: the tokenizer is a byte-level BPE trained in milliseconds with
``tokenizers`` on a small corpus made of the SegAgent protocol strings, with the special tokens
the processors and chat templates need. The chat templates are small Jinja templates written
here that produce the same layout as the real models' (ChatML for Qwen, ``USER: <image>\\n...
ASSISTANT:`` for LLaVA).

Qwen processors cannot be constructed without torchvision (their video processor is a
placeholder), so the folders are written through the same video-less processor subclass the
loader uses, by the production ``save_processor``, which writes the real class name as the saved
``processor_class``, as a real checkpoint has it. Images are kept tiny: Qwen's image processor gets a
small ``max_pixels`` (at most 16 merged image tokens), LLaVA's a 28x28 crop with 14-pixel patches (4 image tokens).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from segagent_backend.agent.protocol import (
    QWEN_VL_CHAT_PROMPT,
    SEGAGENT_LLAVA,
    SEGAGENT_QWEN,
    answer_prefix,
    format_answer,
    task_text,
)
from segagent_backend.agent.types import Click

PathLike = Union[str, Path]

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]

# ChatML with Qwen2-VL's image placeholder; a system turn is added when the messages have none.
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# LLaVA-1.5 layout: "USER: <image>\n{text} ASSISTANT:"
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if m['role'] != 'user' %}</s>{% else %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def protocol_corpus() -> list[str]:
    """Sentences with every protocol string (prompt, answers in both conventions, digits)."""
    captions = ["the brown chicken in front of more chickens", "fat legs", "person bottom left", "a red disk"]
    lines = [QWEN_VL_CHAT_PROMPT.format(image="/tmp/overlay.jpg", caption=c) for c in captions]
    for i, caption in enumerate(captions):
        lines.append(task_text(caption))
        for j in range(12):
            click = Click(7.0 * j + i, 5.0 * j + 2 * i, positive=bool(j % 2))
            for convention in (SEGAGENT_QWEN, SEGAGENT_LLAVA):
                lines.append(format_answer(caption, (j * 9 % 101) / 100, click, 100, 80, convention))
        lines.append(answer_prefix(caption) + "100")
    lines.append(" ".join(str(n) for n in range(1000)))
    return lines * 3


def make_tokenizer(specials: list[str], vocab_size: int = 700, **tokens):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on :func:`protocol_corpus` (milliseconds).

    ``tokens`` sets eos_token / pad_token / bos_token / unk_token; every special is atomic.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(protocol_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=specials, **tokens)


def _qwen_tokenizer():
    return make_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _video_less(kind: str):
    from segagent_backend.agent.policies.hf_vlm import video_less_processor_class

    return video_less_processor_class(kind)


def _qwen_text_config(vocab_size: int, tok) -> dict:
    # head_dim = 32 / 2 = 16; mrope_section must sum to head_dim / 2 = 8
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))


def _qwen_ids(tok) -> dict:
    return dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))


def _save_qwen(folder: PathLike, model_cls, config, kind: str, seed: int) -> Path:
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from segagent_backend.agent.policies.hf_vlm import save_processor

    folder = Path(folder)
    tok = _qwen_tokenizer()
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"),
                                            tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    # 28 = patch 14 x merge 2: 4..16 merged image tokens per image whatever its size
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = _video_less(kind)(image_processor=image_processor, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)
    save_processor(processor, folder)  # the production writer: the saved processor_class is the real one
    return folder


def make_tiny_qwen2_vl(folder: PathLike, seed: int = 0) -> Path:
    """A 2-layer random Qwen2-VL (hidden 32) + offline processor saved in ``folder``; returns it."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = _qwen_tokenizer()
    config = Qwen2VLConfig(
        text_config=_qwen_text_config(len(tok), tok),
        # vision hidden_size is the merger's output size: it must equal the text hidden size
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        **_qwen_ids(tok))
    return _save_qwen(folder, Qwen2VLForConditionalGeneration, config, "qwen2_vl", seed)


def make_tiny_qwen2_5_vl(folder: PathLike, seed: int = 0) -> Path:
    """A 2-layer random Qwen2.5-VL (hidden 32) + offline processor saved in ``folder``; returns it."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = _qwen_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(len(tok), tok),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, out_hidden_size=32,
                           fullatt_block_indexes=[1]),
        **_qwen_ids(tok))
    return _save_qwen(folder, Qwen2_5_VLForConditionalGeneration, config, "qwen2_5_vl", seed)


def make_tiny_llava(folder: PathLike, seed: int = 0) -> Path:
    """A 2-layer random LLaVA (CLIP 28 px / 14 px patches + Llama, hidden 32) saved in ``folder``."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = Path(folder)
    tok = make_tokenizer(LLAVA_SPECIALS, eos_token="</s>", pad_token="<pad>", bos_token="<s>", unk_token="<unk>")
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                           projection_dim=32),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=4,
        vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    # 28 / 14 = 2x2 patches + CLS, minus CLS ("default" strategy) = 4 image tokens
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


def make_bare_tokenizer_folder(folder: PathLike) -> Path:
    """A folder holding a model config and only a tokenizer (no image processor): the loader must refuse it."""
    from transformers import Qwen2VLConfig

    folder = Path(folder)
    tok = _qwen_tokenizer()
    tok.save_pretrained(folder)
    Qwen2VLConfig(text_config=_qwen_text_config(len(tok), tok),
                  vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2),
                  **_qwen_ids(tok)).save_pretrained(folder)
    return folder


MAKERS = {"qwen2_vl": make_tiny_qwen2_vl, "qwen2_5_vl": make_tiny_qwen2_5_vl, "llava": make_tiny_llava}
