"""Constrained decoding that follows the tokenizer: for every answer text the grammar allows, exactly the
token sequence ``tokenizer.encode`` produces for it (:func:`answer_processor`), never another split.

The text-level grammar (:mod:`.grammar`) admits any split and stays as the fallback.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch

from ..protocol import SEGAGENT_QWEN, SEPARATOR, CoordinateConvention

# The text-level grammar (.grammar) admits ANY split of an allowed text into tokens, so a model can be
# pushed onto splits it never saw (Qwen: after "Current IOU: 87" the two-space token 256 instead of
# " " 220 + " Positive" 43903). What follows admits, for every allowed answer text, exactly the token
# sequence the tokenizer itself produces for it.

Encode = Callable[[str], list[int]]
Decode = Callable[[list[int]], str]


class NotCanonicalError(ValueError):
    """The tokenizer's encodings of the answers cannot be assembled from per-field pieces."""


def coordinate_texts(convention: CoordinateConvention) -> tuple[str, ...]:
    """Every number ``format_answer`` can write for ``convention``: the steps of [0, scale) as
    ``convention.text`` writes them (SegAgent-Qwen ``0``..``999``, SegAgent-LLaVA ``0.000``..``0.999``)."""
    step = 10.0 ** -convention.decimals
    count = int(round(convention.scale / step))
    return tuple(convention.text(round(k * step, convention.decimals)) for k in range(count))


def answer_templates(convention: CoordinateConvention = SEGAGENT_QWEN, allow_stop: bool = True) -> list[list]:
    """The answers after the forced prefix, as templates: a str is literal text, a tuple the choices of a
    field. ``IOU  (Positive|Negative) point: (A, B)`` (+ ``IOU`` alone, a stop, when ``allow_stop``):
    exactly the texts :func:`~segagent_backend.agent.protocol.format_answer` writes."""
    ious, numbers = tuple(str(i) for i in range(101)), coordinate_texts(convention)
    click = [ious, SEPARATOR, ("Positive", "Negative"), " point: (", numbers, ", ", numbers, ")"]
    return [click] + ([[ious]] if allow_stop else [])


def forced_split(encode: Encode, prefix: str, bodies: Sequence[str]) -> tuple[str, str]:
    """``(prompt_part, head)`` with ``prefix == prompt_part + head``: the longest start of ``prefix``
    whose tokens begin ``encode(prefix + body)`` for every body. Feeding ``prompt_part`` and letting
    the grammar write ``head`` first keeps the answer on the tokenizer's own split where the prefix's
    last token would merge with the answer (byte-level BPE: ``": "`` + ``"87"`` -> ``" 87"``). Qwen's
    tokenizers split digits and a lone space off, so there ``head`` is empty."""
    full = [encode(prefix + body) for body in bodies]
    for k in range(len(prefix), -1, -1):
        ids = encode(prefix[:k])
        if all(f[:len(ids)] == ids for f in full):
            return prefix[:k], prefix[k:]
    return "", prefix  # encode("") == [] is a prefix of everything: not reached


class CanonicalAnswers:
    """The answer language as the tokenizer's own token sequences, in a form a decoder can step through.

    ``encode`` maps a text to ids (no special tokens added); the generated text is ``head + answer``
    and its canonical tokens are ``encode(context + head + answer)`` past ``encode(context)`` (which
    must be their start: checked). ``context`` = "" is the trainer's convention (prompt and answer
    encoded apart); ``context`` = the forced prefix is the one of a model trained on whole answers.

    Exact and small: a template (``IOU  KIND point: (A, B)``) has 1.2e8..2e8 texts, too many to encode,
    but tokenizers split them into pre-tokens at digit / space / punctuation boundaries. The templates are
    cut in the literal text between fields, at character positions where EVERY sampled encoding has a
    token boundary; each field's piece (its tokens between two cuts) is then encoded for every value of
    the field (all 101 estimates, both kinds, all coordinates), and the decomposition is verified on all
    those texts plus random combinations: ``encode(text) == concatenation of its pieces``, otherwise
    :class:`NotCanonicalError`. The pieces of each segment form a token trie; a decoding state is a set
    of (template, segment, trie node).
    """

    def __init__(self, encode: Encode, decode: Decode, templates: Sequence[Sequence], head: str = "",
                 context: str = "", samples: int = 400, seed: int = 0):
        self._encode, self._decode, self.head, self.context = encode, decode, head, context
        self._context_ids = encode(context) if context else []
        anchor = encode("0")[-1:]
        self._anchor, self._anchor_text = anchor, decode(anchor)
        self.token_strings: dict[int, str] = {}
        self.tries: list[list[list[tuple[dict, bool]]]] = []  # template -> segment -> node -> (children, end)
        self._rng = np.random.default_rng(seed)
        for template in templates:
            self.tries.append(self._build(template, samples))
        self.start = self._closure({(t, 0, 0) for t in range(len(self.tries))})

    # ---- encoding helpers
    def encode_generated(self, text: str) -> list[int]:
        """The canonical ids of generated ``text`` (after the context)."""
        ids = self._encode(self.context + text)
        n = len(self._context_ids)
        if ids[:n] != self._context_ids:
            raise NotCanonicalError(f"the context's tokens are not a prefix of the encoding of context + "
                                    f"{text!r}: the forced prefix merges with the answer (see forced_split)")
        return ids[n:]

    def token_text(self, i: int) -> str:
        if i not in self.token_strings:
            text = self._decode(self._anchor + [i])
            self.token_strings[i] = text[len(self._anchor_text):] if text.startswith(self._anchor_text) else text
        return self.token_strings[i]

    def _ends(self, ids: list[int], text: str) -> list[int]:
        """Character offset (in ``text``) where each token ends."""
        ends, pos = [], 0
        for i in ids:
            pos += len(self.token_text(i))
            ends.append(pos)
        if pos != len(text) or "".join(self.token_strings[i] for i in ids) != text:  # fall back: decode prefixes
            ends = [len(self._decode(ids[:k + 1])) for k in range(len(ids))]
            if not ends or ends[-1] != len(text):
                raise NotCanonicalError(f"cannot align the tokens of {text!r} with its characters")
        return ends

    # ---- construction
    def _build(self, template: Sequence, samples: int) -> list:
        # alternate literal / field: lits[0] F[0] lits[1] ... F[m-1] lits[m]
        lits, fields = [self.head], []
        for part in template:
            if isinstance(part, str):
                lits[-1] += part
            else:
                fields.append(tuple(part))
                lits.append("")
        m = len(fields)
        if m == 0:
            return [self._trie([tuple(self.encode_generated(lits[0]))])]
        default = [len(f) // 2 for f in fields]
        combos = [tuple(default[:j] + [v] + default[j + 1:]) for j in range(m) for v in range(len(fields[j]))]
        combos += [tuple(int(self._rng.integers(len(f))) for f in fields) for _ in range(samples if m > 1 else 0)]
        combos += [tuple(0 for _ in fields), tuple(len(f) - 1 for f in fields)]
        rows = []
        for combo in combos:
            spans, text = [], lits[0]
            for j, v in enumerate(combo):
                spans.append((len(text), len(text) + len(fields[j][v])))
                text += fields[j][v] + lits[j + 1]
            ids = self.encode_generated(text)
            rows.append((combo, spans, ids, self._ends(ids, text)))
        # one cut in the literal between consecutive fields: a token boundary in every sample
        offsets = []
        for j in range(m - 1):
            ok = [o for o in range(len(lits[j + 1]) + 1)
                  if all(spans[j][1] + o in ends for _, spans, _, ends in rows)]
            if not ok:
                raise NotCanonicalError(f"no token boundary always falls in {lits[j + 1]!r}: tokens span fields")
            offsets.append(ok[0])

        def pieces(spans, ids, ends) -> list[tuple[int, ...]]:
            cuts = [spans[j][1] + offsets[j] for j in range(m - 1)]
            out, start = [], 0
            for cut in cuts:
                k = ends.index(cut) + 1
                out.append(tuple(ids[start:k]))
                start = k
            return out + [tuple(ids[start:])]

        table: list[dict] = [{} for _ in range(m)]
        for combo, spans, ids, ends in rows[:sum(len(f) for f in fields)]:  # the sweeps: every value of a field
            for j, piece in enumerate(pieces(spans, ids, ends)):
                table[j].setdefault(combo[j], piece)
        for combo, spans, ids, ends in rows:
            if [table[j][v] for j, v in enumerate(combo)] != pieces(spans, ids, ends):
                text = "".join(lits[j] + fields[j][v] for j, v in enumerate(combo)) + lits[m]
                raise NotCanonicalError(f"the encoding of {text!r} is not the concatenation of its fields' pieces")
        return [self._trie(list(table[j].values())) for j in range(m)]

    @staticmethod
    def _trie(sequences: list[tuple[int, ...]]) -> list[tuple[dict, bool]]:
        children: list[dict] = [{}]
        ends = [False]
        for seq in sequences:
            node = 0
            for tok in seq:
                if tok not in children[node]:
                    children[node][tok] = len(children)
                    children.append({})
                    ends.append(False)
                node = children[node][tok]
            ends[node] = True
        return list(zip(children, ends))

    # ---- stepping
    def _closure(self, states) -> frozenset:
        out, todo = set(), list(states)
        while todo:
            t, seg, node = todo.pop()
            if (t, seg, node) in out:
                continue
            out.add((t, seg, node))
            if self.tries[t][seg][node][1] and seg + 1 < len(self.tries[t]):
                todo.append((t, seg + 1, 0))
        return frozenset(out)

    def step(self, state: frozenset, token: int) -> frozenset:
        """The state after ``token``; empty = not canonical."""
        nxt = {(t, seg, self.tries[t][seg][node][0][token]) for t, seg, node in state
               if token in self.tries[t][seg][node][0]}
        return self._closure(nxt) if nxt else frozenset()

    def allowed(self, state: frozenset) -> set[int]:
        return {tok for t, seg, node in state for tok in self.tries[t][seg][node][0]}

    def complete(self, state: frozenset) -> bool:
        """True when the tokens so far are a whole answer."""
        return any(self.tries[t][seg][node][1] and seg + 1 == len(self.tries[t]) for t, seg, node in state)

    def accepts(self, ids: Sequence[int]) -> bool:
        state = self.start
        for i in ids:
            state = self.step(state, i)
        return bool(state) and self.complete(state)


class CanonicalLogitsProcessor:
    """Masks the logits so the generated ids stay on the tokenizer's own encoding of an allowed answer.

    ``scores``: (rows, vocab); ``input_ids``: (rows, prompt_len + generated). Rows that already ended are
    left alone. The stop ids are allowed only where a whole answer has been written (the estimate alone
    only when the templates have it: ``allow_stop``), or as a way out of a state with no continuation.
    Allowed ids are cached per state (a few thousand states, a few ids each), states per id prefix.
    """

    def __init__(self, answers: CanonicalAnswers, stop_ids: Sequence[int]):
        self.answers, self.stop_ids = answers, list(stop_ids)
        self.grammar = answers
        self.prompt_len = 0
        self._allowed: dict = {}
        self._indices: dict = {}
        self._states: dict = {(): answers.start}

    @property
    def token_strings(self) -> dict[int, str]:
        return self.answers.token_strings

    def for_prompt(self, prompt_len: int) -> "CanonicalLogitsProcessor":
        """A view for one generate call (prompt length of its padded batch) sharing the caches."""
        view = copy.copy(self)
        view.prompt_len = prompt_len
        return view

    def state(self, ids: Sequence[int]) -> frozenset:
        key = tuple(ids)
        if key not in self._states:
            if len(self._states) > 50_000:
                self._states = {(): self.answers.start}
            self._states[key] = self.answers.step(self.state(key[:-1]), key[-1])
        return self._states[key]

    def allowed(self, state: frozenset) -> list[int]:
        if state not in self._allowed:
            keep = sorted(self.answers.allowed(state))
            if self.answers.complete(state) or not keep:
                keep += [i for i in self.stop_ids if i not in keep]
            self._allowed[state] = keep
        return self._allowed[state]

    def _index(self, state: frozenset, vocab: int, device: torch.device) -> torch.Tensor:
        key = (state, vocab, str(device))
        if key not in self._indices:
            self._indices[key] = torch.tensor([i for i in self.allowed(state) if i < vocab], dtype=torch.long,
                                              device=device)
        return self._indices[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        stops = set(self.stop_ids)
        masked = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            if stops.intersection(ids):
                masked[row] = False
            else:
                masked[row, self._index(self.state(ids), scores.shape[-1], scores.device)] = False
        return scores.masked_fill(masked, float("-inf"))


def hf_codec(tokenizer) -> tuple[Encode, Decode]:
    """``encode`` / ``decode`` of a transformers-style tokenizer (no special tokens added, none skipped)."""
    return (lambda text: list(tokenizer.encode(text, add_special_tokens=False)),
            lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False))


def answer_processor(tokenizer, convention: CoordinateConvention, stop_ids: Sequence[int], allow_stop: bool,
                     context: str = "", head: str = "") -> CanonicalLogitsProcessor:
    """The canonical-token logits processor of a tokenizer (transformers-style ``encode``/``decode``).

    ``context`` "" (default): the answer's tokens are ``encode(answer)``, as the fine-tuning code
    (``trainer.sft_data``) encodes them after the prompt. ``context`` = a forced prefix (and ``head``
    from :func:`forced_split`): the tokens ``encode(prefix + answer)`` gives after the prefix, for a model
    trained on whole answers (the released SegAgent-Qwen; on Qwen's vocabulary both are the same).
    ``allow_stop``: the estimate alone (a stop) is an answer; False for models that never write one.
    """
    encode, decode = hf_codec(tokenizer)
    answers = CanonicalAnswers(encode, decode, answer_templates(convention, allow_stop), head=head, context=context)
    return CanonicalLogitsProcessor(answers, stop_ids)
