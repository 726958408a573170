"""Qwen-VL-Chat's tokenizer, natively: tiktoken BPE over ``qwen.tiktoken`` (no code from the checkpoint).

Facts reproduced from the release: NFC-normalised text, the ``PAT_STR`` pre-tokeniser below, all special
tokens allowed in text by default. Ids: 151,643 BPE ranks, then ``<|endoftext|>`` 151643 (eod, also pad),
``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ``<|extra_0..204|>`` 151646-151850, then ``<ref>`` 151851,
``</ref>``, ``<box>``, ``</box>``, ``<quad>``, ``</quad>``, ``<img>`` 151857, ``</img>`` 151858,
``<imgpad>`` 151859.

Images: ``<img>PATH</img>`` becomes a 258-id span: 151857, the UTF-8 bytes of PATH as ids 0..255 (after the
text was BPE-encoded and NFC-normalised, as the release does), ``<imgpad>`` up to 256 ids, then 151858. The
native model overwrites the 256 inner positions with image features, so their ids never reach the LM; they
only matter for reproducing the release's ids exactly. The native policy therefore writes the fixed
placeholder :data:`IMAGE_PLACEHOLDER` (``image.jpg``) instead of a temporary file path.
"""
from __future__ import annotations

import base64
import unicodedata
from pathlib import Path
from typing import Collection, Iterable, Optional, Sequence, Union

PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
ENDOFTEXT, IMSTART, IMEND = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
EXTRAS = tuple(f"<|extra_{i}|>" for i in range(205))
IMAGE_TAGS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
SPECIAL_TOKENS = (ENDOFTEXT, IMSTART, IMEND) + EXTRAS + IMAGE_TAGS
EOD_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645
IMG_START_ID, IMG_END_ID, IMG_PAD_ID = 151857, 151858, 151859
IMG_TOKEN_SPAN = 256
IMAGE_PLACEHOLDER = "image.jpg"  # what the native policy writes between <img> and </img>
VOCAB_FILE = "qwen.tiktoken"


def load_tiktoken_ranks(path: Union[str, Path]) -> dict[bytes, int]:
    """``qwen.tiktoken`` (lines ``base64(token) rank``) -> {token bytes: rank}."""
    ranks = {}
    with open(path, "rb") as handle:
        for line in handle.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _closed_spans(ids: Sequence[int], start: int, end: int) -> list[tuple[int, int]]:
    """(start index, end index inclusive) of every ``start ... end`` span; ValueError when one is unclosed."""
    spans, i = [], 0
    while True:
        try:
            a = ids.index(start, i)
        except ValueError:
            return spans
        try:
            b = ids.index(end, a)
        except ValueError:
            raise ValueError("Unclosed image token") from None
        spans.append((a, b))
        i = b + 1


class QwenTokenizer:
    """The subset of a transformers tokenizer the SegAgent policies use, on tiktoken.

    ``__call__`` pads with <|endoftext|> on ``padding_side`` (default ``left``, as generation needs).
    ``eos_token_id`` is <|endoftext|> (the release leaves it unset and stops on it through generation_config).
    """

    def __init__(self, vocab_file: Union[str, Path], padding_side: str = "left", errors: str = "replace"):
        import tiktoken

        self.mergeable_ranks = load_tiktoken_ranks(vocab_file)
        n = len(self.mergeable_ranks)
        self.special_tokens = {tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)}
        if self.special_tokens[ENDOFTEXT] != EOD_ID or self.special_tokens["<imgpad>"] != IMG_PAD_ID:
            raise ValueError(f"{vocab_file}: {n} BPE ranks, Qwen-VL-Chat has 151643")
        self.encoding = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks,
                                          special_tokens=self.special_tokens)
        self.decoder: dict[int, Union[bytes, str]] = {v: k for k, v in self.mergeable_ranks.items()}
        self.decoder.update({v: k for k, v in self.special_tokens.items()})
        self.padding_side = padding_side
        self.errors = errors
        self.eod_id = self.pad_token_id = self.eos_token_id = EOD_ID
        self.im_start_id, self.im_end_id = IM_START_ID, IM_END_ID
        self.img_start_id, self.img_end_id, self.img_pad_id = IMG_START_ID, IMG_END_ID, IMG_PAD_ID
        self.all_special_ids = sorted(self.special_tokens.values())
        self.name_or_path = str(Path(vocab_file).parent)

    @classmethod
    def from_pretrained(cls, folder: Union[str, Path], **kwargs) -> "QwenTokenizer":
        """From a checkpoint folder holding ``qwen.tiktoken`` (nothing else is read)."""
        return cls(Path(folder) / VOCAB_FILE, **kwargs)

    def __len__(self) -> int:
        return self.encoding.n_vocab

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def get_vocab(self) -> dict[bytes, int]:
        """The BPE ranks {token bytes: id}, special tokens excluded (as the release's ``get_vocab``)."""
        return dict(self.mergeable_ranks)

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str, allowed_special: Union[str, Collection[str]] = "all",
               disallowed_special: Union[str, Collection[str]] = (), add_special_tokens: bool = True,
               **_ignored) -> list[int]:
        """Ids of ``text`` exactly as the release's ``tokenizer.encode`` (no BOS/EOS is ever added)."""
        if isinstance(allowed_special, (set, frozenset, list, tuple)):
            allowed_special = set(allowed_special)
        ids = self.encoding.encode(unicodedata.normalize("NFC", text), allowed_special=allowed_special,
                                   disallowed_special=disallowed_special)
        spans = _closed_spans(ids, IMG_START_ID, IMG_END_ID)
        if not spans:
            return ids
        out, prev = [], 0
        for a, b in spans:
            out.extend(ids[prev:a])
            out.extend(self._image_span(ids[a + 1:b]))
            prev = b + 1
        out.extend(ids[prev:])
        return out

    def _image_span(self, inner: Sequence[int]) -> list[int]:
        parts = [self.decoder[i] for i in inner]
        if any(isinstance(p, str) for p in parts):
            raise ValueError("special tokens inside <img>...</img>")
        raw = b"".join(parts)
        if len(raw) > IMG_TOKEN_SPAN:
            raise ValueError("The content in <img>..</img> is too long")
        return [IMG_START_ID] + list(raw) + [IMG_PAD_ID] * (IMG_TOKEN_SPAN - len(raw)) + [IMG_END_ID]

    def image_span(self, path: str = IMAGE_PLACEHOLDER) -> list[int]:
        """The 258 ids ``<img>path</img>`` becomes (start, path bytes, pads to 256, end)."""
        return self.encode(f"<img>{path}</img>")

    def tokenize(self, text: str, **kwargs) -> list[Union[bytes, str]]:
        """Token surface forms (bytes for BPE tokens, str for special tokens)."""
        return [self.decoder[i] for i in self.encode(text, **kwargs)]

    def convert_tokens_to_ids(self, tokens: Union[bytes, str, Iterable[Union[bytes, str]]]):
        """Special-token strings or BPE byte strings -> ids (None for an unknown token)."""
        if isinstance(tokens, (str, bytes)):
            if tokens in self.special_tokens:
                return self.special_tokens[tokens]
            return self.mergeable_ranks.get(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def __call__(self, text: Union[str, Sequence[str]], padding: Union[bool, str] = False,
                 return_tensors: Optional[str] = None, **kwargs) -> dict:
        """{"input_ids", "attention_mask"}; several texts need ``padding`` (pads with eod on padding_side)."""
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.encode(t, **kwargs) for t in texts]
        width = max(len(r) for r in rows)
        if padding in (False, "do_not_pad") and len({len(r) for r in rows}) > 1:
            raise ValueError("texts of different lengths need padding='longest'")
        ids, mask = [], []
        for r in rows:
            pad = [self.pad_token_id] * (width - len(r))
            ones, zeros = [1] * len(r), [0] * len(pad)
            ids.append(pad + r if self.padding_side == "left" else r + pad)
            mask.append(zeros + ones if self.padding_side == "left" else ones + zeros)
        if return_tensors == "pt":
            import torch

            return {"input_ids": torch.tensor(ids, dtype=torch.long),
                    "attention_mask": torch.tensor(mask, dtype=torch.long)}
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' or None")
        if isinstance(text, str):
            return {"input_ids": ids[0], "attention_mask": mask[0]}
        return {"input_ids": ids, "attention_mask": mask}

    # ---------------------------------------------------------------- decoding
    def decode(self, token_ids: Union[int, Iterable[int]], skip_special_tokens: bool = False,
               errors: Optional[str] = None, **_ignored) -> str:
        """Text of ``token_ids``; an image span is written back as ``<img>path</img>`` like the release."""
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        ids = [int(i) for i in token_ids]
        spans = _closed_spans(ids, IMG_START_ID, IMG_END_ID)
        if spans:
            out, prev = [], 0
            for a, b in spans:
                inner = ids[a + 1:b]
                if IMG_PAD_ID in inner:
                    inner = inner[:inner.index(IMG_PAD_ID)]
                path = bytes(inner).decode("utf-8")
                out += ids[prev:a] + [IMG_START_ID] + self.encoding.encode(path) + [IMG_END_ID]
                prev = b + 1
            ids = out + ids[prev:]
        if skip_special_tokens:
            ids = [i for i in ids if i < EOD_ID]
        return self.encoding.decode(ids, errors=errors or self.errors)

    def batch_decode(self, sequences: Iterable[Iterable[int]], **kwargs) -> list[str]:
        return [self.decode(s, **kwargs) for s in sequences]
