"""``QwenVLChatNative``: Qwen-VL-Chat on transformers' own Qwen2ForCausalLM + the native vision tower.

Reproduces the release's forward and greedy generation (checked against the original code in
tests/agent/test_qwen_native.py):

- Images: every ``<img>`` (151857) starts a 258-id span ending with ``</img>`` (151858); the 256 positions
  between them are overwritten with the image's features (``encode_images``) after the token embedding.
- Positions: the release's rotary embedding ignores ``position_ids`` and the padding: position = index in the
  (left-padded) row, also while generating. We pass exactly those positions (``arange``) to Qwen2.
- Stop words: the release's ``StopWordsLogitsProcessor``: once a row ends with a stop word (``<|im_end|>``,
  ``<|im_start|>``), <|endoftext|> gets logit 2**15, which ends that row (eos = <|endoftext|> = pad).
- Length: Qwen-1 switches on logn attention scaling and dynamic NTK rotary scaling past 2048 positions; this
  port does not reproduce them and refuses prompts (and prompt + new tokens) longer than 2048 positions.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from .convert import qwen2_config
from .tokenizer import EOD_ID, IM_END_ID, IM_START_ID, IMG_PAD_ID, IMG_START_ID, IMG_TOKEN_SPAN
from .vision import QwenVisionTower, preprocess_images

MAX_POSITIONS = 2048
STOP_WORDS_IDS = [[IM_END_ID], [IM_START_ID]]


class PromptTooLongError(ValueError):
    """A sequence would pass the 2048 positions where Qwen-1's logn/NTK scaling starts (not reproduced)."""


def check_length(positions: int, what: str = "prompt") -> None:
    """Raise PromptTooLongError when ``positions`` > 2048."""
    if positions > MAX_POSITIONS:
        raise PromptTooLongError(
            f"{what} needs {positions} positions; the native Qwen-VL-Chat supports at most {MAX_POSITIONS} "
            "(beyond them the original applies logn attention and dynamic NTK scaling, which this port does "
            "not reproduce)")


def _stop_words_processor_class():
    from transformers import LogitsProcessor

    class StopWordsLogitsProcessor(LogitsProcessor):
        """The release's stop-word rule: a row whose ids end with a stop word gets logit 2**15 on ``eos``."""

        def __init__(self, stop_words_ids: Sequence[Sequence[int]], eos_token_id: int = EOD_ID):
            if not stop_words_ids or any(not list(w) for w in stop_words_ids):
                raise ValueError(f"stop_words_ids must be a non-empty list of non-empty lists: {stop_words_ids}")
            self.stop_words_ids = [list(map(int, w)) for w in stop_words_ids if list(w) != [eos_token_id]]
            self.eos_token_id = eos_token_id

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            for row, ids in enumerate(input_ids.tolist()):
                if any(len(w) <= len(ids) and ids[-len(w):] == w for w in self.stop_words_ids):
                    scores[row, self.eos_token_id] = float(2 ** 15)
            return scores

    return StopWordsLogitsProcessor


def stop_words_processor(stop_words_ids: Sequence[Sequence[int]] = STOP_WORDS_IDS, eos_token_id: int = EOD_ID):
    """A transformers LogitsProcessor with the release's stop-word semantics (see module docstring)."""
    return _stop_words_processor_class()(stop_words_ids, eos_token_id)


class QwenVLChatNative(nn.Module):
    """Qwen-VL-Chat: ``visual`` (:class:`~.vision.QwenVisionTower`) + ``lm`` (transformers Qwen2ForCausalLM).

    ``config`` is the checkpoint's ``config.json`` as a dict. Build the weights with :mod:`.loader`.
    """

    def __init__(self, config: Mapping[str, Any], attn_implementation: str = "sdpa"):
        super().__init__()
        from transformers import GenerationConfig, Qwen2ForCausalLM

        self.config = dict(config)
        self.visual = QwenVisionTower(**self.config["visual"])
        self.lm = Qwen2ForCausalLM(qwen2_config(self.config, attn_implementation))
        self.lm.generation_config = GenerationConfig(do_sample=False, max_new_tokens=512, pad_token_id=EOD_ID,
                                                     eos_token_id=EOD_ID)
        self.image_start_id = int(self.config["visual"].get("image_start_id", IMG_START_ID))

    @property
    def device(self) -> torch.device:
        return self.lm.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.model.embed_tokens.weight.dtype

    @property
    def generation_config(self):
        return self.lm.generation_config

    # ---------------------------------------------------------------- images
    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, 448, 448) float (see :func:`~.vision.preprocess_images`) -> (B, 256, hidden)
        in the model's dtype."""
        return self.visual(pixel_values.to(self.visual.conv1.weight.device))

    def image_spans(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """(row, index of <img>) of every image span, row-major (the release's order); ValueError when a span
        is not exactly <img>, 256 ids, </img>."""
        spans = [(int(r), int(c)) for r, c in (input_ids == self.image_start_id).nonzero().tolist()]
        width = input_ids.shape[1]
        for row, col in spans:
            end = col + IMG_TOKEN_SPAN + 1
            if end >= width or int(input_ids[row, end]) != self.image_start_id + 1:
                raise ValueError(f"image span at row {row}, index {col} is not <img> + {IMG_TOKEN_SPAN} ids + </img>")
        if int((input_ids == self.image_start_id + 1).sum()) != len(spans):
            raise ValueError("unmatched </img> in input_ids")
        return spans

    @staticmethod
    def image_paths(input_ids: torch.Tensor, spans: Iterable[tuple[int, int]]) -> list[str]:
        """The file paths written in the spans (UTF-8 bytes up to <imgpad>), as the release reads them."""
        paths = []
        for row, col in spans:
            inner = input_ids[row, col + 1:col + 1 + IMG_TOKEN_SPAN].tolist()
            inner = inner[:inner.index(IMG_PAD_ID)] if IMG_PAD_ID in inner else inner
            paths.append(bytes(inner).decode("utf-8"))
        return paths

    def embed(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
              image_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings (B, L, hidden) with image features spliced into every image span.

        Images come from ``image_features`` (n, 256, hidden), else ``pixel_values`` (n, 3, 448, 448), else
        (the release's way) from the files named in the spans; n = number of spans, in row-major order.
        """
        input_ids = input_ids.to(self.device)
        embeds = self.lm.get_input_embeddings()(input_ids)
        spans = self.image_spans(input_ids)
        if not spans:
            return embeds
        if image_features is None:
            if pixel_values is None:
                pixel_values = preprocess_images(self.image_paths(input_ids, spans), self.visual.image_size)
            image_features = self.encode_images(pixel_values)
        if image_features.shape[0] != len(spans):
            raise ValueError(f"{len(spans)} image spans in input_ids but {image_features.shape[0]} images given")
        embeds = embeds.clone()
        for k, (row, col) in enumerate(spans):
            embeds[row, col + 1:col + 1 + IMG_TOKEN_SPAN] = image_features[k].to(embeds.device, embeds.dtype)
        return embeds

    @staticmethod
    def positions(input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) position ids as the release computes them: the index in the row, padding included."""
        b, n = input_ids.shape
        return torch.arange(n, device=input_ids.device).unsqueeze(0).expand(b, n)

    # ---------------------------------------------------------------- LM
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                pixel_values: Optional[torch.Tensor] = None, image_features: Optional[torch.Tensor] = None,
                **kwargs):
        """Logits (B, L, vocab) for (left-padded) ``input_ids`` (B, L) with 1/0 ``attention_mask``.

        Returns transformers' CausalLMOutputWithPast; logits at padded positions are meaningless.
        """
        check_length(input_ids.shape[1])
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        embeds = self.embed(input_ids, pixel_values, image_features)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask,
                       position_ids=self.positions(input_ids), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 pixel_values: Optional[torch.Tensor] = None, image_features: Optional[torch.Tensor] = None,
                 stop_words_ids: Optional[Sequence[Sequence[int]]] = STOP_WORDS_IDS, logits_processor=None,
                 generation_config=None, **kwargs) -> torch.Tensor:
        """Sequences (B * num_return_sequences, L + new) = prompt ids followed by the generated ids.

        Greedy unless sampling kwargs say otherwise; stops as the release does (``stop_words_ids``, default
        <|im_end|>/<|im_start|>, force <|endoftext|>, which is eos and pad). Other kwargs (``max_new_tokens``,
        ``eos_token_id``, ``num_return_sequences``, ``do_sample``...) go to transformers' ``generate``; logits
        processors see the full rows (prompt included), as with the release.
        """
        from transformers import LogitsProcessorList

        generation_config = copy.deepcopy(generation_config if generation_config is not None
                                          else self.generation_config)
        # the release builds its stop-word processor from the config's eos before call kwargs apply
        eos = generation_config.eos_token_id
        eos = EOD_ID if eos is None else int(eos[0] if isinstance(eos, (list, tuple)) else eos)
        kwargs = generation_config.update(**kwargs)  # generation settings in, model kwargs out
        max_new = generation_config.max_new_tokens
        total = input_ids.shape[1] + int(max_new) if max_new is not None else int(generation_config.max_length)
        check_length(total, "prompt + max_new_tokens")
        generation_config.return_dict_in_generate = False
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        processors = LogitsProcessorList(logits_processor or [])
        if stop_words_ids:  # after the caller's processors, as the release appends it
            processors.append(stop_words_processor(stop_words_ids, eos))
        embeds = self.embed(input_ids, pixel_values, image_features)
        return self.lm.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask,
                                position_ids=self.positions(input_ids), logits_processor=processors,
                                generation_config=generation_config, **kwargs)
