"""Constrained decoding follows the tokenizer: for every answer the grammar allows, exactly the token
sequence the tokenizer itself produces for it, on the tiny test tokenizers and on the real
``qwen.tiktoken`` vocabulary of Qwen-VL-Chat (when the oracle folder and tiktoken are present)."""
from __future__ import annotations

import base64
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from segagent_backend.agent.policies.canonical import (
    CanonicalAnswers,
    NotCanonicalError,
    answer_processor,
    answer_templates,
    forced_split,
    hf_codec,
)
from segagent_backend.agent.protocol import (
    QWEN_VL_CHAT_PROMPT,
    SEGAGENT_LLAVA,
    SEGAGENT_QWEN,
    answer_prefix,
    format_answer,
    parse_answer,
)
from segagent_backend.agent.types import Click
from tests import tiny_vlms

REPO = Path(__file__).resolve().parents[2]
QWEN_TIKTOKEN = REPO.parent / "shared" / "oracles" / "qwen-vl-chat" / "qwen.tiktoken"
# tokenization_qwen.py of Qwen-VL-Chat (facts in the oracle README)
QWEN_PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_SPECIALS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
                 + ["<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>"])
STOP = 151645  # <|im_end|> on qwen.tiktoken; tiny tokenizers use their own ids
CAPTIONS = ["a red disk", "the brown chicken in front of more chickens", "café 北京 naïve — ½ 🐔",
            "cafe\u0301 (NFD)", "<ref>nested</ref> tag", "x<box>(1,2),(3,4)</box>", "ends with digit 7",
            "trailing space ", "Current IOU: 5"]
SPECIAL_COORDS = [0, 9, 10, 99, 100, 999, 1, 11, 101, 110, 500, 990]


class QwenTiktoken:
    """Qwen-VL-Chat's tokenizer in brief: tiktoken over qwen.tiktoken with its PAT_STR, NFC text,
    every special token allowed (what ``QWenTokenizer.encode`` does for answer text)."""

    def __init__(self, path: Path):
        import tiktoken

        ranks = {base64.b64decode(tok): int(rank)
                 for tok, rank in (line.split() for line in path.read_bytes().splitlines() if line)}
        specials = {s: len(ranks) + i for i, s in enumerate(QWEN_SPECIALS)}
        self.enc = tiktoken.Encoding("Qwen", pat_str=QWEN_PAT_STR, mergeable_ranks=ranks, special_tokens=specials)
        self.ranks = ranks
        self.all_special_ids = list(specials.values())

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.enc.decode(list(ids), errors="replace")

    def vocab_texts(self) -> dict[int, str]:
        out = {}
        for tok, i in self.ranks.items():
            try:
                out[i] = tok.decode("ascii")
            except UnicodeDecodeError:
                pass
        return out


@lru_cache(maxsize=None)
def tokenizer(name: str):
    if name == "qwen.tiktoken":
        pytest.importorskip("tiktoken", reason="tiktoken is not installed (pip install tiktoken)")
        if not QWEN_TIKTOKEN.is_file():
            pytest.skip(f"the real Qwen-VL-Chat vocabulary is not here: {QWEN_TIKTOKEN} is absent")
        tok = QwenTiktoken(QWEN_TIKTOKEN)
        assert tok.encode("<ref></ref><|im_end|>") == [151851, 151852, STOP]
        return tok
    if name == "tiny-qwen":  # the tokenizer of the tiny Qwen2-VL / Qwen2.5-VL
        return tiny_vlms.make_tokenizer(tiny_vlms.QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    return tiny_vlms.make_tokenizer(tiny_vlms.LLAVA_SPECIALS, eos_token="</s>", pad_token="<pad>", bos_token="<s>",
                                    unk_token="<unk>")


TOKENIZERS = ["tiny-qwen", "tiny-llava", "qwen.tiktoken"]


def stop_id(tok) -> int:
    return STOP if isinstance(tok, QwenTiktoken) else tok.eos_token_id


@lru_cache(maxsize=None)
def vocab_by_text(name: str) -> dict[str, list[int]]:
    """Text -> ids of every ASCII vocabulary entry (the tokens a text-level grammar could pick)."""
    tok = tokenizer(name)
    if isinstance(tok, QwenTiktoken):
        texts = tok.vocab_texts()
    else:
        vocab = sorted(set(tok.get_vocab().values()) - set(tok.all_special_ids))
        anchor = tok.encode("0", add_special_tokens=False)[-1:]
        head = tok.decode(anchor)
        texts = {i: t[len(head):] for i, t in zip(vocab, tok.batch_decode([anchor + [i] for i in vocab]))
                 if t.startswith(head) and t.isascii() and len(t) > len(head)}
    out: dict[str, list[int]] = {}
    for i, t in texts.items():
        out.setdefault(t, []).append(i)
    return out


def bodies(convention, seed: int = 0) -> list[str]:
    """Many grammatical answers (after the forced prefix), written by format_answer: all 101 estimates,
    both signs, coordinates incl. 0, 9, 10, 99, 100, 999 in both places, and the estimate alone."""
    rng = np.random.default_rng(seed)
    prefix = answer_prefix("c")
    out = []

    def add(iou: int, click):
        out.append(format_answer("c", iou / 100, click, 1000, 1000, convention)[len(prefix):])

    for iou in range(101):
        add(iou, None)
        for positive in (True, False):
            row = SPECIAL_COORDS[(iou + positive) % len(SPECIAL_COORDS)]
            add(iou, Click(float(rng.integers(1000)), float(row), positive))
    for a in SPECIAL_COORDS:
        for b in SPECIAL_COORDS:
            add(int(rng.integers(101)), Click(float(b), float(a), bool(rng.integers(2))))
    return out


def spellings(processor, ids: list[int], text: str, by_text: dict[str, list[int]], maxlen: int) -> list[list[int]]:
    """Every id sequence the processor allows after ``ids`` whose text is exactly ``text``."""
    if not text:
        return [[]]
    allowed = set(processor.allowed(processor.state(ids)))
    out = []
    for n in range(1, min(maxlen, len(text)) + 1):
        for i in allowed.intersection(by_text.get(text[:n], ())):
            out += [[i] + rest for rest in spellings(processor, ids + [i], text[n:], by_text, maxlen)]
    return out


def drive(processor, target: str, ids: list[int], by_text: dict[str, list[int]], allow_stop: bool,
          head: str = "") -> int:
    """Walk the processor along ``ids`` (the tokenizer's encoding of ``target``): every canonical id is
    allowed at its step, a stop only after a whole estimate when ``allow_stop``, and ``ids`` is the ONLY
    allowed spelling of ``target``: whatever the model prefers, that text comes out as ``ids``.
    Returns how many vocabulary entries that also continue the text were refused on the way."""
    estimates = {head + str(i) for i in range(101)}
    refused, pos, maxlen = 0, 0, max(map(len, by_text))
    for k, want in enumerate(ids):
        allowed = set(processor.allowed(processor.state(ids[:k])))
        assert want in allowed, (target, k)
        can_stop = allow_stop and target[:pos] in estimates
        assert bool(set(processor.stop_ids) & allowed) == can_stop, (target, k)  # no stop inside an answer
        fits = {i for n in range(1, maxlen + 1) for i in by_text.get(target[pos:pos + n], ())}
        refused += len(fits - allowed)
        pos += len(processor.token_strings[want])
    assert pos == len(target)
    assert spellings(processor, [], target, by_text, maxlen) == [ids], target
    return refused


@pytest.mark.parametrize("convention", [SEGAGENT_QWEN, SEGAGENT_LLAVA], ids=["qwen", "llava"])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_constrained_path_is_the_tokenizers_encoding(name, convention):
    tok = tokenizer(name)
    encode, _ = hf_codec(tok)
    by_text = vocab_by_text(name)
    answers = bodies(convention)
    assert {b.split()[0] for b in answers} == {str(i) for i in range(101)}  # every estimate
    for allow_stop in (True, False):
        processor = answer_processor(tok, convention, [stop_id(tok)], allow_stop)
        refused = 0
        for body in answers:
            ids = encode(body)
            is_stop = "point" not in body
            if is_stop and not allow_stop:
                state = processor.state(ids)
                assert stop_id(tok) not in processor.allowed(state), body  # the estimate alone is no answer
                continue
            assert processor.answers.accepts(ids), body
            refused += drive(processor, body, ids, by_text, allow_stop)
            end = processor.allowed(processor.state(ids))
            assert stop_id(tok) in end, body
            if not is_stop:
                assert end == [stop_id(tok)], body  # after ")" only the end of turn
        assert refused > 0  # other splits of the same texts exist in the vocabulary and were refused
        # no stop at step 0, and never one for the released model before a whole click
        assert stop_id(tok) not in processor.allowed(processor.answers.start)


def test_qwen_tiktoken_refuses_the_two_space_token_and_an_early_stop():
    """The bug of issue 10: after ``87`` only ``" "`` (220) then ``" Positive"`` / ``" Negative"``; the
    two-space token 256 and a stop are refused (the released model never writes the estimate alone)."""
    tok = tokenizer("qwen.tiktoken")
    assert tok.encode("87  Positive") == [23, 22, 220, 43903] and tok.encode("  ") == [256]
    assert tok.encode("  Negative")[1:] == [50857]
    processor = answer_processor(tok, SEGAGENT_QWEN, [STOP], allow_stop=False)
    after = processor.allowed(processor.state([23, 22]))
    assert 220 in after and 256 not in after and STOP not in after
    assert set(processor.allowed(processor.state([23, 22, 220]))) == {43903, 50857}
    assert processor.state([23, 22, 256]) == frozenset()  # not canonical: dead
    assert STOP not in processor.allowed(processor.answers.start)
    with_stop = answer_processor(tok, SEGAGENT_QWEN, [STOP], allow_stop=True)  # a kind that can stop
    assert STOP in with_stop.allowed(with_stop.state([23, 22]))


@pytest.mark.parametrize("name", TOKENIZERS)
def test_forced_prefix_tokens_start_the_whole_answer(name):
    """The forced prefix: its tokens must begin encode(prefix + answer). Qwen's vocabulary splits the
    digits and the lone space off, so the whole prefix goes in the prompt; a byte-level BPE merges
    ``" "`` with the estimate (``" 87"``), so the grammar writes that space (``head``) itself, and the
    prompt part + the constrained path is again encode(prefix + answer)."""
    tok = tokenizer(name)
    encode, _ = hf_codec(tok)
    answers = bodies(SEGAGENT_QWEN)[::7]
    for caption in CAPTIONS:
        prefix = answer_prefix(caption)
        prompt_part, head = forced_split(encode, prefix, answers)
        assert prompt_part + head == prefix
        if name == "qwen.tiktoken":
            assert head == ""
            # the released model was trained on whole answers: prefix tokens + encode(body) is that
            assert all(encode(prefix) + encode(b) == encode(prefix + b) for b in answers), caption
            chat = QWEN_VL_CHAT_PROMPT.format(image="/tmp/x.jpg", caption=caption)
            assert encode(chat + prefix) == encode(chat) + encode(prefix)  # "\n" then <ref>: no merge
        else:
            assert head == " ", (caption, head)  # ": " + "87" -> ":" " 87"
    # full-text mode on the tokenizer's own split, prefix boundary handled by the head
    prefix = answer_prefix(CAPTIONS[2])
    prompt_part, head = forced_split(encode, prefix, answers)
    for allow_stop in (True, False):
        processor = answer_processor(tok, SEGAGENT_QWEN, [stop_id(tok)], allow_stop, context=prompt_part, head=head)
        for body in bodies(SEGAGENT_QWEN)[::5]:
            if "point" not in body and not allow_stop:
                continue
            whole = encode(prefix + body)
            start = encode(prompt_part)
            assert whole[:len(start)] == start
            path = whole[len(start):]
            drive(processor, head + body, path, vocab_by_text(name), allow_stop, head)
            assert stop_id(tok) in processor.allowed(processor.state(path))


@pytest.mark.parametrize("name", TOKENIZERS)
def test_logits_processor_masks_real_sized_scores(name):
    """Through ``__call__`` on full-vocabulary scores: greedy 'models' that prefer long tokens (the
    two-space token, "100" over "1") or random ones still write the tokenizer's own encoding of a click
    answer, then the end of turn; a row that already ended is left alone."""
    tok = tokenizer(name)
    encode, decode = hf_codec(tok)
    stop = stop_id(tok)
    processor = answer_processor(tok, SEGAGENT_QWEN, [stop], allow_stop=False).for_prompt(3)
    vocab = max(stop, *(max(v) for v in vocab_by_text(name).values())) + 300  # 151945 for Qwen
    long_tokens = torch.zeros(vocab)
    for text, ids in vocab_by_text(name).items():
        long_tokens[ids] = len(text)
    rng = torch.Generator().manual_seed(0)
    for bias in [long_tokens] + [torch.randn(vocab, generator=rng) for _ in range(5)]:
        ids = [7, 8, 9]  # a prompt of 3 ids
        while stop not in ids and len(ids) < 40:
            ended = ids[:3] + [stop] + [0] * (len(ids) - 4)  # from the 2nd step: a row that already ended
            rows = [ids] if len(ids) == 3 else [ids, ended]
            scores = processor(torch.tensor(rows), bias.repeat(len(rows), 1))
            assert len(rows) == 1 or torch.equal(scores[1], bias)  # the ended row is untouched
            ids.append(int(scores[0].argmax()))
        text = decode(ids[3:-1])
        assert ids[-1] == stop and ids[3:-1] == encode(text), text
        parsed = parse_answer(answer_prefix("c") + text, 1000, 1000)
        assert parsed.click is not None and not parsed.malformed, text


def test_stand_in_char_tokenizer_and_pieces_that_span_fields():
    """One id per character (the Qwen-VL-Chat test stand-in) works; a tokenizer whose tokens run across
    the fields (2-character chunks from the start) cannot be assembled from pieces: a clear error."""
    class Chars:
        def encode(self, text, add_special_tokens=False):
            return [10 + ord(c) for c in text]

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i - 10) for i in ids)

    processor = answer_processor(Chars(), SEGAGENT_QWEN, [2], allow_stop=True)
    for body in bodies(SEGAGENT_QWEN)[::3]:
        ids = Chars().encode(body)
        assert processor.answers.accepts(ids) and 2 in processor.allowed(processor.state(ids))
    assert 2 in processor.allowed(processor.state(Chars().encode("42")))

    pairs = {}

    def encode(text):
        return [pairs.setdefault(text[i:i + 2], 100 + len(pairs)) for i in range(0, len(text), 2)]

    def decode(ids):
        names = {v: k for k, v in pairs.items()}
        return "".join(names.get(i, "?") for i in ids)

    with pytest.raises(NotCanonicalError):
        CanonicalAnswers(encode, decode, answer_templates(SEGAGENT_QWEN, allow_stop=False))


def test_native_qwen_tokenizer_gives_the_same_grammar():
    """The project's native Qwen-VL-Chat tokenizer (qwen_native), where present, yields the same token
    grammar as tiktoken over qwen.tiktoken: the processor can be built from either."""
    native = pytest.importorskip("segagent_backend.agent.qwen_native.tokenizer",
                                 reason="the native Qwen-VL-Chat tokenizer is not in this checkout")
    reference = tokenizer("qwen.tiktoken")
    tok = native.QwenTokenizer(QWEN_TIKTOKEN)
    ours = answer_processor(tok, SEGAGENT_QWEN, [STOP], allow_stop=False)
    theirs = answer_processor(reference, SEGAGENT_QWEN, [STOP], allow_stop=False)
    assert ours.answers.tries == theirs.answers.tries
