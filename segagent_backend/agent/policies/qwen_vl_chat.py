"""SegAgent policy on the released SegAgent-Qwen weights (Qwen-VL-Chat, ``trust_remote_code``).

The checkpoint folder carries its own modeling code (``modeling_qwen.py``, ``visual.py``,
``qwen_generation_utils.py``) and a tiktoken tokenizer (``tokenization_qwen.py``, ``qwen.tiktoken``).
As the released evaluation code does, the prompt is built by hand
(``QWEN_VL_CHAT_PROMPT.format(image=path, caption=...)``) and the overlay is handed over as a JPEG
file (PIL default quality): Qwen-VL's tokenizer turns ``<img>path</img>`` into image placeholder
tokens and the model opens the file during ``generate``, so the file must live until generate
returns. Files go to one private directory per policy (``tempfile.mkdtemp``), get unique names and
are deleted after each call; ``close()`` removes the directory.

transformers versions (remote code)
-----------------------------------
Qwen-VL-Chat's remote code was written for transformers 4.31-4.32: the Qwen-VL repository pins
``transformers==4.32.0`` and SegAgent's own environment (``env.txt``) lists ``transformers==4.31.0``
with ``tiktoken``, ``einops`` and ``transformers-stream-generator``. Users report later 4.3x
releases working. It does NOT run with the transformers 5.x this project installs, and
:func:`load_qwen_vl_chat` refuses it (``check_version=False`` overrides):

- since 4.50 ``PreTrainedModel`` no longer inherits ``GenerationMixin``; ``QWenLMHeadModel``
  derives from ``PreTrainedModel`` only and its ``generate`` calls ``super().generate``, which no
  longer exists;
- the remote attention code keeps the legacy tuple-of-tuples KV cache (``layer_past``,
  ``present = (key, value)``); 5.x generation hands models ``Cache`` objects and dropped the
  legacy format.

Run this policy in a separate environment with ``transformers==4.32.0`` (plus tiktoken, einops,
transformers_stream_generator, torchvision for the visual encoder's transforms). Nothing here
could be tested with the real weights; the unit tests cover prompt building, the temporary-file
lifecycle, generation arguments and answer handling with a stand-in model and tokenizer.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..protocol import QWEN_VL_CHAT_PROMPT, SEGAGENT_QWEN, Answer, CoordinateConvention, answer_prefix
from ..loading import ModelLoadError, resolve_device
from .base import Observation
from .text import TextAnswerPolicy
from .hf_vlm import decode_answers

STOP_WORDS = ("<|im_end|>", "<|im_start|>")
TESTED_TRANSFORMERS = "4.31-4.32"


def _version_tuple(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def load_qwen_vl_chat(path: Union[str, Path], device: str = "auto", dtype: str = "auto",
                      check_version: bool = True):
    """(model, tokenizer) of a Qwen-VL-Chat checkpoint folder (remote code), model in eval mode.

    dtype: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32, passed as the remote config's
    ``bf16`` / ``fp16`` / ``fp32`` flags as Qwen-VL expects. Raises ModelLoadError naming the folder.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"Qwen-VL-Chat folder {str(path)!r} does not exist or is not a folder")
    missing = [n for n in ("config.json", "modeling_qwen.py", "tokenization_qwen.py") if not (folder / n).is_file()]
    if missing:
        raise ModelLoadError(f"{str(folder)!r} is not a Qwen-VL-Chat checkpoint: missing {', '.join(missing)}")
    if check_version and _version_tuple(transformers.__version__) >= (4, 50):
        raise ModelLoadError(
            f"Qwen-VL-Chat's remote code in {str(folder)!r} needs transformers {TESTED_TRANSFORMERS} (found "
            f"{transformers.__version__}): its generate relies on GenerationMixin being inherited and on tuple "
            "KV caches; run it in an environment with transformers==4.32.0")
    dev = resolve_device(device)
    name = {"auto": "bf16" if dev.type == "cuda" else "fp32", "bfloat16": "bf16", "float16": "fp16",
            "float32": "fp32"}.get(dtype, dtype)
    if name not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"invalid dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), trust_remote_code=True, device_map=str(dev) if dev.type == "cuda" else None,
            **{name: True}).eval()
    except Exception as exc:
        raise ModelLoadError(f"cannot load Qwen-VL-Chat from {str(folder)!r}: {exc}") from exc
    if dev.type != "cuda":
        model = model.to(dev)
    return model, tokenizer


class QwenVLChatPolicy(TextAnswerPolicy):
    """SegAgent-Qwen. k == 1 greedy, k > 1 multinomial sampling (top-k/top-p off) at ``temperature``.

    Batched with left padding (pad = eod) when the tokenizer accepts it, else one observation per
    generate call. ``constrained`` (default: on with ``forced_prefix``) applies the same answer
    grammar as :class:`~.hf_vlm.HFVLMPolicy`.
    """

    kind = "qwen-vl-chat"

    def __init__(self, model, tokenizer, convention: CoordinateConvention = SEGAGENT_QWEN, max_new_tokens: int = 24,
                 forced_prefix: bool = True, temperature: float = 1.0, constrained: Optional[bool] = None,
                 name: Optional[str] = None, compact_literals: bool = True):
        source = getattr(getattr(model, "config", None), "_name_or_path", "") or "qwen-vl-chat"
        super().__init__(tokenizer, name or Path(str(source)).name, convention, max_new_tokens, forced_prefix,
                         temperature, constrained, compact_literals)
        self.model = model
        eod = getattr(tokenizer, "eod_id", None)
        if eod is not None:
            tokenizer.pad_token_id = eod  # Qwen-VL has no pad token: the released code pads with eod
        self.stop_words_ids = [[tokenizer.convert_tokens_to_ids(t)] for t in STOP_WORDS]
        self.stop_ids = sorted({ids[0] for ids in self.stop_words_ids} | ({eod} if eod is not None else set()))
        self.batched = self._left_padding()
        self.workdir: Optional[str] = tempfile.mkdtemp(prefix="segagent-qwenvl-")

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], device: str = "auto", dtype: str = "auto",
                        **kwargs) -> "QwenVLChatPolicy":
        model, tokenizer = load_qwen_vl_chat(path, device=device, dtype=dtype)
        kwargs.setdefault("name", Path(str(path)).name)
        return cls(model, tokenizer, **kwargs)

    def _left_padding(self) -> bool:
        """True when the tokenizer pads on the left with a pad id (needed for one batched generate)."""
        try:
            self.tokenizer.padding_side = "left"
        except Exception:
            return False
        return getattr(self.tokenizer, "padding_side", None) == "left" and self.tokenizer.pad_token_id is not None

    def prompt(self, image_path: str, expression: str) -> str:
        """The released hand-built ChatML prompt (+ the forced prefix)."""
        text = QWEN_VL_CHAT_PROMPT.format(image=image_path, caption=expression)
        return text + answer_prefix(expression) if self.forced_prefix else text

    def write_overlay(self, observation: Observation) -> str:
        """The overlay as a JPEG (PIL default quality) with a unique name in the private directory."""
        from PIL import Image

        if self.workdir is None:
            raise RuntimeError("policy is closed")
        path = os.path.join(self.workdir, f"{uuid.uuid4().hex}.jpg")
        Image.fromarray(np.ascontiguousarray(observation.overlay)).save(path)
        return path

    def _generate(self, prompts: list[str], k: int, extra_tokens: int = 0) -> list[list[int]]:
        """One generate call; returns the generated ids per row (prompt removed), rows grouped by prompt."""
        from transformers import LogitsProcessorList

        enc = self.tokenizer(prompts, return_tensors="pt", padding="longest")
        device = next(self.model.parameters()).device
        input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        kwargs = dict(max_new_tokens=self.max_new_tokens + extra_tokens, num_return_sequences=k,
                      stop_words_ids=self.stop_words_ids,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids,
                      generation_config=getattr(self.model, "generation_config", None), return_dict_in_generate=False)
        kwargs.update(self.sampling_kwargs(k))
        if self.constrained:
            kwargs["logits_processor"] = LogitsProcessorList([self.grammar().for_prompt(input_ids.shape[1])])
        out = self.model.generate(input_ids, attention_mask=attention_mask, **kwargs)
        return out[:, input_ids.shape[1]:].tolist()

    @torch.inference_mode()
    def propose(self, observations: Sequence[Observation], k: int = 1) -> list[list[Answer]]:
        if not observations:
            return []
        start = time.perf_counter()
        paths = [self.write_overlay(o) for o in observations]
        try:
            prompts = [self.prompt(p, o.expression) for p, o in zip(paths, observations)]
            extra = self.echo_tokens(observations)
            if self.batched:
                rows = self._generate(prompts, k, extra)
            else:
                rows = [row for prompt in prompts for row in self._generate([prompt], k, extra)]
        finally:
            for path in paths:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
        result = decode_answers(self.tokenizer, rows, observations, k, self.stop_ids, self.forced_prefix,
                                self.convention, self.stats)
        self.stats.calls += 1
        self.stats.answers += len(observations) * k
        self.stats.seconds += time.perf_counter() - start
        return result

    def close(self) -> None:
        """Remove the private temporary directory (idempotent)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "QwenVLChatPolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
