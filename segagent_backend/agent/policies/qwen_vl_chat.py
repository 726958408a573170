"""SegAgent policy on the released SegAgent-Qwen weights (a full fine-tune of Qwen-VL-Chat), run natively.

The model is :class:`~..qwen_native.QwenVLChatNative` on transformers' own Qwen2 (no ``trust_remote_code``,
no code from the checkpoint folder). As the released evaluation code does, the prompt is built by hand
(``QWEN_VL_CHAT_PROMPT``) and the overlay reaches the model as a JPEG at PIL's default quality; the
round trip happens in memory and the features are spliced into the prompt's image span, so no file is
written. One left-padded ``generate`` serves every observation of a step (pad = <|endoftext|>), with the
release's stop words <|im_end|> and <|im_start|>.

The released model always answers with a click: its grammar has no stop (``allow_stop = False``); an
answer it cannot finish as a click is malformed, which ends the episode under the ``release`` protocol.

Decoding (``decoding``, SEGAGENT_DECODING): ``free`` is the release's own call, nothing forced or masked:
the checkpoint's ``generation_config.json`` (greedy: ``do_sample=False``; its ``max_new_tokens``, eos and
pad), the stop words, and the answer decoded with its special tokens up to the forced <|endoftext|>.
``grammar``: the echo is forced and the rest constrained to the answer grammar (canonical tokens only).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..protocol import QWEN_VL_CHAT_PROMPT, SEGAGENT_QWEN, Answer, CoordinateConvention
from ..qwen_native import IMAGE_PLACEHOLDER, load_qwen_vl_chat_native, preprocess_images, released_jpeg
from ..qwen_native.tokenizer import EOD_ID, IM_END_ID, IM_START_ID
from .base import Observation
from .text import TextAnswerPolicy


class QwenVLChatPolicy(TextAnswerPolicy):
    """SegAgent-Qwen. k == 1 greedy, k > 1 multinomial sampling (top-k/top-p off) at ``temperature``.

    model: a QwenVLChatNative; tokenizer: its QwenTokenizer (both from :func:`load_qwen_vl_chat_native`).
    """

    kind = "qwen-vl-chat"
    allow_stop = False  # the released weights were never trained on a stop answer

    def __init__(self, model, tokenizer, convention: CoordinateConvention = SEGAGENT_QWEN, max_new_tokens: int = 24,
                 forced_prefix: bool = True, temperature: float = 1.0, constrained: Optional[bool] = None,
                 name: Optional[str] = None, compact_literals: bool = True, decoding: Optional[str] = None,
                 generation_config=None):
        checkpoint = getattr(model, "name_or_path", "") or "qwen-vl-chat"
        super().__init__(tokenizer, name or Path(str(checkpoint)).name, convention, max_new_tokens, forced_prefix,
                         temperature, constrained, compact_literals, decoding)
        self.model = model
        self.stop_ids = [IM_END_ID, IM_START_ID, EOD_ID]
        #: free decoding's config: the checkpoint's generation_config.json (default: the model's)
        self.generation_config = generation_config if generation_config is not None else model.generation_config
        tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(cls, path: Union[str, Path], device: str = "auto", dtype: str = "auto",
                        **kwargs) -> "QwenVLChatPolicy":
        model, tokenizer = load_qwen_vl_chat_native(path, device=device, dtype=dtype)
        kwargs.setdefault("name", Path(str(path)).name)
        kwargs.setdefault("generation_config", checkpoint_generation_config(path))
        return cls(model, tokenizer, **kwargs)

    @property
    def free(self) -> bool:
        """The release's decoding: nothing forced, nothing masked."""
        return not self.forced_prefix and not self.constrained

    def release_eos_id(self) -> Optional[int]:
        return self._eos() if self.free else None

    def _eos(self) -> int:
        eos = getattr(self.generation_config, "eos_token_id", None)
        return EOD_ID if eos is None else int(eos[0] if isinstance(eos, (list, tuple)) else eos)

    def prompt(self, expression: str, head: Optional[str] = None) -> str:
        """The released hand-built ChatML prompt (+ the forced prefix, or a re-fed ``<ref>..</ref><box>..</box>``
        head); the image span is filled with features."""
        return QWEN_VL_CHAT_PROMPT.format(image=IMAGE_PLACEHOLDER, caption=expression) + self.fed_prefix(expression, head)

    @staticmethod
    def pixels(observations: Sequence[Observation]) -> torch.Tensor:
        """(B, 3, 448, 448) float32: each overlay through the release's JPEG round trip and transform."""
        return preprocess_images([released_jpeg(o.overlay) for o in observations])

    @torch.inference_mode()
    def propose(self, observations: Sequence[Observation], k: int = 1) -> list[list[Answer]]:
        if not observations:
            return []
        start = time.perf_counter()
        enc = self.tokenizer([self.prompt(o.expression, o.answer_head) for o in observations], return_tensors="pt",
                             padding="longest")
        prompt_len = enc["input_ids"].shape[1]
        if self.free:  # the release's call: its config (max_new_tokens, eos), greedy, the stop words
            kwargs = dict(generation_config=self.generation_config, num_return_sequences=k, pad_token_id=EOD_ID)
            kwargs.update(dict(do_sample=False) if k == 1 else self.sampling_kwargs(k))
        else:
            kwargs = dict(max_new_tokens=self.max_new_tokens + self.echo_tokens(observations), num_return_sequences=k,
                          pad_token_id=EOD_ID, eos_token_id=self.stop_ids)
            kwargs.update(self.sampling_kwargs(k))
        if self.constrained:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([self.grammar().for_prompt(prompt_len)])
        out = self.model.generate(enc["input_ids"], attention_mask=enc["attention_mask"],
                                  pixel_values=self.pixels(observations).to(self.model.dtype), **kwargs)
        return self.decoded(out[:, prompt_len:].tolist(), observations, k, start)


def checkpoint_generation_config(path: Union[str, Path]):
    """The folder's ``generation_config.json`` as a transformers GenerationConfig (JSON only, no code), or
    None when the folder has none (the model's default config is used then)."""
    if not (Path(path) / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(str(path))
