"""SFT samples -> model inputs exactly as the policy sees them at inference, and batch collation.

One sample is encoded as two parts whose ids are concatenated:

* the prompt: :func:`~segagent_backend.agent.policies.hf_vlm.chat_prompt` (the chat template over
  [image, task text] + the forced prefix ``<ref>CAPTION</ref> Current IOU: ``), run through the
  processor with the sample's overlay image, the very call :class:`HFVLMPolicy` makes;
* the answer: the rest of the target (``target[len(prefix):]``) tokenized on its own, then the
  end-of-turn token the policy stops on.

Tokenizing them separately keeps the token boundary where inference has it (generation starts
right after the prompt's last token). ``labels`` are -100 on every prompt token, so the loss is
only on what the model writes. A batch is right-padded (ids with the pad id, labels with -100,
masks with 0) and the image tensors are concatenated along dim 0, which fits both Qwen's flattened
patches (+ ``image_grid_thw``) and LLaVA's ``(images, 3, H, W)`` pixel values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from segagent_backend.agent.policies.hf_vlm import chat_prompt
from segagent_backend.agent.protocol import answer_prefix

from .samples import SFTSample

IGNORE_INDEX = -100
# per-token tensors (batch, seq): padded on the right; every other tensor is per image: concatenated
TOKEN_KEYS = {"input_ids": None, "labels": IGNORE_INDEX, "attention_mask": 0, "mm_token_type_ids": 0,
              "token_type_ids": 0}
_MARK = "SEGAGENTANSWERMARK"


def end_of_turn_id(processor, stop_ids: Sequence[int]) -> int:
    """The stop id the chat template closes an assistant turn with (Qwen: ``<|im_end|>``).

    Found by rendering a conversation with an assistant answer: the first of ``stop_ids`` among the
    tokens after the answer. Templates that close the turn with no stop token (some LLaVA ones)
    fall back to the tokenizer's eos when it is a stop id, else the first stop id.
    """
    tokenizer = processor.tokenizer
    stops = list(stop_ids)
    if not stops:
        raise ValueError("no stop ids: the model has no end-of-turn token to train")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]},
                {"role": "assistant", "content": [{"type": "text", "text": _MARK}]}]
    try:
        text = processor.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses this layout: use the fallback
        text = ""
    if _MARK in text:
        tail = tokenizer.encode(text.split(_MARK, 1)[1], add_special_tokens=False)
        found = [i for i in tail if i in stops]
        if found:
            return int(found[0])
    eos = tokenizer.eos_token_id
    return int(eos) if eos in stops else int(stops[0])


def split_target(sample: SFTSample, forced_prefix: bool = True) -> str:
    """The text the model writes for ``sample``: the target after the forced prefix (all of it without)."""
    prefix = answer_prefix(sample.expression)
    if not sample.target.startswith(prefix):
        raise ValueError(f"sample {sample.name!r}: target {sample.target!r} does not start with the answer "
                         f"prefix {prefix!r} of its expression")
    return sample.target[len(prefix):] if forced_prefix else sample.target


def encode_sample(processor, sample: SFTSample, eot_id: int, forced_prefix: bool = True) -> dict[str, torch.Tensor]:
    """One sample -> 1-D ``input_ids`` / ``labels`` / ``attention_mask`` (+ ``mm_token_type_ids``) and
    the processor's image tensors (``pixel_values``, ``image_grid_thw``...) as it returns them."""
    from PIL import Image

    answer = split_target(sample, forced_prefix)
    prompt = chat_prompt(processor, sample.expression, forced_prefix)
    image = Image.fromarray(np.ascontiguousarray(sample.overlay))
    enc = processor(text=[prompt], images=[image], return_tensors="pt")
    answer_ids = processor.tokenizer.encode(answer, add_special_tokens=False) + [int(eot_id)]
    ids = enc["input_ids"][0]
    n_prompt, n_answer = ids.shape[0], len(answer_ids)
    out = {"input_ids": torch.cat([ids, torch.tensor(answer_ids, dtype=ids.dtype)]),
           "labels": torch.cat([torch.full((n_prompt,), IGNORE_INDEX, dtype=torch.long),
                                torch.tensor(answer_ids, dtype=torch.long)])}
    for key, value in enc.items():
        if key == "input_ids":
            continue
        if key in TOKEN_KEYS:  # answer tokens: attended (1), plain text (0)
            fill = 1 if key == "attention_mask" else 0
            out[key] = torch.cat([value[0], torch.full((n_answer,), fill, dtype=value.dtype)])
        else:
            out[key] = value
    return out


class SFTDataset(torch.utils.data.Dataset):
    """SFT samples encoded on access (an image's patches are only in memory while its batch is).

    Every target is checked when the dataset is made, so a bad sample fails before training starts.
    """

    def __init__(self, samples: Sequence[SFTSample], processor, eot_id: int, forced_prefix: bool = True):
        self.samples, self.processor, self.eot_id, self.forced_prefix = list(samples), processor, eot_id, forced_prefix
        for sample in self.samples:
            split_target(sample, forced_prefix)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return encode_sample(self.processor, self.samples[index], self.eot_id, self.forced_prefix)


def collate(features: Sequence[dict[str, torch.Tensor]], pad_id: int,
            dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
    """Right-pad the per-token tensors to the longest row, concatenate the image tensors along dim 0.

    ``dtype``: floating image tensors are cast to it (the model's dtype, e.g. bf16).
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    length = max(f["input_ids"].shape[0] for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if key in TOKEN_KEYS:
            fill = pad_id if key == "input_ids" else TOKEN_KEYS[key]
            out = torch.full((len(values), length), fill, dtype=values[0].dtype)
            for row, value in enumerate(values):
                out[row, : value.shape[0]] = value
        else:
            out = torch.cat(values, dim=0)
            if dtype is not None and out.is_floating_point():
                out = out.to(dtype)
        batch[key] = out
    return batch


@dataclass
class SFTCollator:
    """``collate`` as a Trainer ``data_collator``."""

    pad_id: int
    dtype: Optional[torch.dtype] = None

    def __call__(self, features: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id, self.dtype)


# ---------------------------------------------------------------- native Qwen-VL-Chat (SegAgent-Qwen)
def native_prompt(expression: str, forced_prefix: bool = True) -> str:
    """The prompt :class:`~segagent_backend.agent.policies.qwen_vl_chat.QwenVLChatPolicy` writes: the
    release's hand-built ChatML (image placeholder in the ``<img>`` span) + the forced prefix."""
    from segagent_backend.agent.protocol import QWEN_VL_CHAT_PROMPT
    from segagent_backend.agent.qwen_native import IMAGE_PLACEHOLDER

    text = QWEN_VL_CHAT_PROMPT.format(image=IMAGE_PLACEHOLDER, caption=expression)
    return text + answer_prefix(expression) if forced_prefix else text


def encode_native_sample(tokenizer, sample: SFTSample, forced_prefix: bool = True) -> dict[str, torch.Tensor]:
    """One sample for the native Qwen-VL-Chat: 1-D ``input_ids`` / ``labels`` / ``attention_mask`` and
    ``pixel_values`` (1, 3, 448, 448).

    Prompt ids = ``tokenizer.encode(native_prompt)`` and pixels = the overlay through the release's JPEG
    round trip and transform, the very calls the policy makes; the answer = ``tokenizer.encode(body)``
    (the ids the policy's grammar admits) + ``<|im_end|>``, which closes every assistant turn of the
    release's ChatML SFT data (the newline after it is never generated: the policy stops on it).
    """
    from segagent_backend.agent.qwen_native import preprocess_images, released_jpeg
    from segagent_backend.agent.qwen_native.tokenizer import IM_END_ID

    answer = split_target(sample, forced_prefix)
    prompt_ids = tokenizer.encode(native_prompt(sample.expression, forced_prefix))
    answer_ids = tokenizer.encode(answer) + [IM_END_ID]
    ids = torch.tensor(prompt_ids + answer_ids, dtype=torch.long)
    labels = torch.tensor([IGNORE_INDEX] * len(prompt_ids) + answer_ids, dtype=torch.long)
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
            "pixel_values": preprocess_images([released_jpeg(sample.overlay)])}


class NativeSFTDataset(torch.utils.data.Dataset):
    """SFT samples encoded on access for the native Qwen-VL-Chat (targets checked at construction).

    Batches collate with :func:`collate` (pad id <|endoftext|>): right padding keeps every real token at
    its unpadded position, since the model's positions are the row index.
    """

    def __init__(self, samples: Sequence[SFTSample], tokenizer, forced_prefix: bool = True):
        self.samples, self.tokenizer, self.forced_prefix = list(samples), tokenizer, forced_prefix
        for sample in self.samples:
            split_target(sample, forced_prefix)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return encode_native_sample(self.tokenizer, self.samples[index], self.forced_prefix)
