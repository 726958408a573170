"""SegAgent policy on any transformers image-text-to-text chat model (Qwen2-VL, Qwen2.5-VL, LLaVA).

One ``propose`` = ONE batched, left-padded ``generate`` call. The user turn is [overlay image,
``task_text(expression)``] through the processor's chat template; with ``forced_prefix`` the
answer's echo ``<ref>CAPTION</ref> Current IOU: `` is appended to the prompt, so the model only
writes the estimate and the click (the echo carries no information and costs ~10-30 tokens).

Constrained decoding (on by default with the forced prefix): a logits processor lets the model
write only ``IOU  (Positive|Negative) point: (NUM, NUM)`` (IOU an integer 0..100, NUM as the
coordinate convention writes it, as ``format_answer`` does) and then an end-of-turn token, so every
answer parses. It follows the tokenizer: for every answer text it allows, only the token sequence
``tokenizer.encode(answer)`` (what fine-tuning trains on; see ``grammar.CanonicalAnswers``), never
another split of the same text. Cheap: the allowed ids depend only on a token-trie state and are
cached across calls; per step each row's few generated ids are looked up in a cache of states.
``compact_literals`` only matters for the text-level fallback (the tokenizer's own split is the only one).
An answer cut off by ``max_new_tokens`` counts as malformed.

Coordinates: the numbers follow ``convention`` (SegAgent-Qwen: row first, 0..999 of the original
image); parsed clicks are pixels of the original image, x = column, y = row.
"""
from __future__ import annotations

import importlib.util
import time
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..protocol import SEGAGENT_QWEN, Answer, CoordinateConvention, answer_prefix, task_text
from ..loading import ModelLoadError, resolve_checkpoint, resolve_device
from .base import Observation
from .text import TextAnswerPolicy

# end-of-turn markers of the supported families; the ones the vocabulary has also stop generation
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "</s>")
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


# ---------------------------------------------------------------------------------------------- loading
@lru_cache(maxsize=None)
def video_less_processor_class(model_type: str) -> type:
    """Qwen2-VL / Qwen2.5-VL processor without the video processor.

    Without torchvision the video processor is a placeholder and the stock class cannot be built
    or loaded. Leaving ``video_processor`` out of ``__init__``'s signature removes it from the
    processor's attributes (ProcessorMixin reads them from the signature); images and text work.
    """
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLProcessor as base
    elif model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as base
    else:
        raise ValueError(f"no video-less processor for model type {model_type!r}")

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(base.__name__ + "WithoutVideo", (base,), {"__init__": __init__, "real_class_name": base.__name__})


def save_processor(processor, folder: Union[str, Path]) -> None:
    """``processor.save_pretrained(folder)`` under the REAL processor class name.

    ``save_pretrained`` writes ``type(processor).__name__`` as ``processor_class``; for the
    video-less subclass that is e.g. ``Qwen2VLProcessorWithoutVideo``, a name no other program can
    resolve. The saved configs get the stock class's name (``Qwen2VLProcessor``), as a real
    checkpoint has it; :func:`load_hf_vlm` loads it back either way.
    """
    import json

    folder = Path(folder)
    processor.save_pretrained(folder)
    real = getattr(type(processor), "real_class_name", None)
    if real is None:
        return
    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("processor_class") not in (None, real):
                data["processor_class"] = real
                path.write_text(json.dumps(data, indent=2))


def _load_processor(checkpoint: str, model_type: str):
    from transformers import AutoProcessor, ProcessorMixin

    folder = Path(checkpoint)
    configs = ("preprocessor_config.json", "processor_config.json")
    if folder.is_dir() and not any((folder / n).is_file() for n in configs):
        raise ModelLoadError(f"{checkpoint!r} has no image processor (no preprocessor_config.json or "
                             "processor_config.json): a bare tokenizer is not enough for an image-text model")
    try:
        processor, error = AutoProcessor.from_pretrained(checkpoint), None
    except Exception as exc:  # e.g. "Can't load video processor" without torchvision
        processor, error = None, exc
    if not isinstance(processor, ProcessorMixin) and model_type in ("qwen2_vl", "qwen2_5_vl"):
        try:
            processor = video_less_processor_class(model_type).from_pretrained(checkpoint)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the {model_type} processor from {checkpoint!r}: {exc}") from exc
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        found = type(processor).__name__ if processor is not None else f"an error ({error})"
        raise ModelLoadError(f"{checkpoint!r} has no image processor: AutoProcessor gave {found}; an image-text "
                             "model folder needs preprocessor/processor config files, not only a tokenizer")
    return processor


def _attention(dev: torch.device, dtype: torch.dtype) -> str:
    """flash_attention_2 on CUDA in half precision when flash_attn is installed, else sdpa."""
    half = dtype in (torch.float16, torch.bfloat16)
    return "flash_attention_2" if dev.type == "cuda" and half and importlib.util.find_spec("flash_attn") else "sdpa"


def load_hf_vlm(path_or_id: Union[str, Path], device: str = "auto", dtype: Union[str, torch.dtype] = "auto"):
    """(model, processor) of an image-text-to-text chat checkpoint, model in eval mode.

    device: auto / cpu / cuda / cuda:N; on CUDA the model is placed with ``device_map``
    (``auto`` spreads it over the visible GPUs). dtype: auto (bf16 on CUDA, fp32 on CPU), bf16,
    fp16, fp32 or a torch dtype. Raises ModelLoadError naming the folder and the reason.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    checkpoint = resolve_checkpoint(path_or_id)
    dev = resolve_device(device)
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        torch_dtype = dtype if isinstance(dtype, torch.dtype) else _DTYPES.get(str(dtype).lower())
        if torch_dtype is None:
            raise ValueError(f"invalid dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    try:
        config = AutoConfig.from_pretrained(checkpoint)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the model config in {checkpoint!r}: {exc}") from exc
    processor = _load_processor(checkpoint, config.model_type)
    kwargs = dict(dtype=torch_dtype, attn_implementation=_attention(dev, torch_dtype))
    if dev.type == "cuda":
        kwargs["device_map"] = "auto" if device == "auto" else str(dev)
    try:
        model = AutoModelForImageTextToText.from_pretrained(checkpoint, **kwargs)
    except ValueError as exc:
        if "attn" not in str(exc).lower():
            raise ModelLoadError(f"cannot load the model in {checkpoint!r}: {exc}") from exc
        kwargs["attn_implementation"] = "eager"  # an architecture without sdpa support
        model = AutoModelForImageTextToText.from_pretrained(checkpoint, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model in {checkpoint!r}: {exc}") from exc
    if dev.type != "cuda":
        model = model.to(dev)
    return model.eval(), processor


# ---------------------------------------------------------------------------------------------- prompt
def chat_prompt(processor, expression: str, forced_prefix: bool = True, head: Optional[str] = None) -> str:
    """The text of one policy step: the chat template over [image, ``task_text(expression)``] with the
    generation prompt, + the forced prefix ``answer_prefix(expression, head)`` when ``forced_prefix``
    (without it, only a re-fed ``head``).

    The one definition inference (:meth:`HFVLMPolicy.prompt`) and fine-tuning (``trainer.sft_data``)
    share, so a model is trained on exactly the prompt it is asked with.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": task_text(expression)}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + (answer_prefix(expression, head) if forced_prefix else (head or ""))


def stop_token_ids(model, tokenizer) -> list[int]:
    """The end-of-turn ids a policy stops on: the generation config's eos plus the known markers
    (:data:`END_OF_TURN`) the vocabulary has, plus the tokenizer's eos; sorted, unique."""
    eos = model.generation_config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN if t in vocab]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


# ---------------------------------------------------------------------------------------------- policy
class HFVLMPolicy(TextAnswerPolicy):
    """SegAgent on a transformers chat VLM. ``propose`` batches all observations in one generate call.

    k == 1: greedy; k > 1: multinomial sampling at ``temperature`` (top-k/top-p off, whatever the
    checkpoint's generation config says: tree search needs real samples). ``constrained`` (default:
    on when ``forced_prefix``) needs the forced prefix: the grammar starts after the echo. ``decoding``
    ``free``: neither (the model writes its whole answer, with the echo's tokens in its budget).
    """

    kind = "hf-vlm"

    def __init__(self, model, processor, convention: CoordinateConvention = SEGAGENT_QWEN, max_new_tokens: int = 24,
                 forced_prefix: bool = True, temperature: float = 1.0, constrained: Optional[bool] = None,
                 name: Optional[str] = None, compact_literals: bool = True, decoding: Optional[str] = None):
        name = name or Path(str(getattr(model.config, "_name_or_path", "") or model.config.model_type)).name
        super().__init__(processor.tokenizer, name, convention, max_new_tokens, forced_prefix, temperature,
                         constrained, compact_literals, decoding)
        self.model, self.processor = model, processor
        self.tokenizer.padding_side = "left"  # generation continues from the last position of every row
        self.stop_ids = self._stop_ids()

    @classmethod
    def from_pretrained(cls, path_or_id: Union[str, Path], device: str = "auto", dtype: str = "auto",
                        **kwargs) -> "HFVLMPolicy":
        model, processor = load_hf_vlm(path_or_id, device=device, dtype=dtype)
        kwargs.setdefault("name", Path(str(path_or_id)).name)
        return cls(model, processor, **kwargs)

    def _stop_ids(self) -> list[int]:
        return stop_token_ids(self.model, self.tokenizer)


    def prompt(self, expression: str, head: Optional[str] = None) -> str:
        """The chat-template prompt for one observation (+ the forced prefix)."""
        return chat_prompt(self.processor, expression, self.forced_prefix, head)

    def _generation_kwargs(self, k: int, budget: int) -> dict:
        kwargs = dict(max_new_tokens=budget, eos_token_id=self.stop_ids, num_return_sequences=k,
                      pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                      else self.stop_ids[0])
        kwargs.update(self.sampling_kwargs(k))
        return kwargs

    @torch.inference_mode()
    def propose(self, observations: Sequence[Observation], k: int = 1) -> list[list[Answer]]:
        from PIL import Image
        from transformers import LogitsProcessorList

        if not observations:
            return []
        start = time.perf_counter()
        images = [Image.fromarray(np.ascontiguousarray(o.overlay)) for o in observations]
        texts = [self.prompt(o.expression, o.answer_head) for o in observations]
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(self.model.device)
        kwargs = self._generation_kwargs(k, self.max_new_tokens + self.echo_tokens(observations))
        prompt_len = inputs["input_ids"].shape[1]
        if self.constrained:
            kwargs["logits_processor"] = LogitsProcessorList([self.grammar().for_prompt(prompt_len)])
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**inputs, **kwargs)
        return self.decoded(out[:, prompt_len:].tolist(), observations, k, start)
