"""Constrained decoding of SegAgent answers: after the forced prefix the model may only write
``IOU  (Positive|Negative) point: (NUM, NUM)`` or ``IOU`` alone (a stop) and then an end-of-turn token.

Two levels:
- :class:`AnswerGrammar` / :class:`GrammarLogitsProcessor`: a small NFA over characters and a processor
  over the decoded text of the vocabulary. It admits ANY split of an allowed text into tokens (a
  model can be pushed onto splits it never saw); kept as the fallback and for text-level checks.
- :mod:`.canonical` (:func:`~.canonical.answer_processor`): for every allowed answer text exactly the token
  sequence the tokenizer itself produces for it (the default; this module is its fallback).
"""
from __future__ import annotations

import copy
from itertools import product
from typing import Sequence

import numpy as np
import torch

from ..protocol import SEGAGENT_QWEN, CoordinateConvention

class AnswerGrammar:
    """``IOU  (Positive|Negative) point: (NUM, NUM)`` as a small NFA over characters.

    A template is a tuple of elements: a literal character, ``"iou"`` (an integer 0..100), or a
    number slot ``(int_digits, frac_digits)`` (no leading zeros: ``0``, ``12``, ``0.25``). An NFA
    state is (template, element index, slot progress, in the fraction part); a grammar state is a
    frozenset of NFA states. Slot progress of ``iou``: 0 nothing, 1 "0", 2 "1", 3 "10", 4 one
    digit 2-9, 5 done ("NN" or "100"); of a number slot: digits written (a leading 0 fills it).
    """

    IOU_NEXT = {(0, "0"): 1, (0, "1"): 2, (2, "0"): 3, (3, "0"): 5}

    def __init__(self, convention: CoordinateConvention = SEGAGENT_QWEN, allow_stop: bool = True):
        int_digits = max(1, len(str(int(np.ceil(convention.scale)) - 1)))
        coord = (int_digits, convention.decimals)
        # the estimate alone is a stop answer: the policy judges the mask it was shown good enough
        self.templates = tuple(("iou", " ", " ", *f"{kind} point: (", coord, ",", " ", coord, ")")
                               for kind in ("Positive", "Negative")) + ((("iou",),) if allow_stop else ())
        self.start = frozenset((t, 0, 0, False) for t in range(len(self.templates)))
        self.alphabet = sorted(set("0123456789.").union(e for tp in self.templates for e in tp
                                                         if isinstance(e, str) and len(e) == 1))
        self._forced: dict = {}

    def _step(self, st: tuple, c: str) -> set:
        t, pos, n, frac = st
        elements = self.templates[t]
        if pos == len(elements):
            return set()
        el, out = elements[pos], set()
        digit = c in "0123456789"
        if el == "iou":
            if digit and n in (0, 2, 4):
                out.add((t, pos, self.IOU_NEXT.get((n, c), 4 if n == 0 else 5), False))
            elif digit and n == 3 and c == "0":
                out.add((t, pos, 5, False))
        elif isinstance(el, str):
            return {(t, pos + 1, 0, False)} if c == el else out
        else:
            int_digits, frac_digits = el
            if digit and not frac and n < int_digits:
                out.add((t, pos, int_digits if n == 0 and c == "0" else n + 1, False))
            elif digit and frac and n < frac_digits:
                out.add((t, pos, n + 1, True))
            elif c == "." and not frac and n >= 1 and frac_digits:
                out.add((t, pos, 0, True))
        if n >= 1:  # the number may end here: the character belongs to the next element
            out |= self._step((t, pos + 1, 0, False), c)
        return out

    def advance(self, state: frozenset, text: str) -> frozenset:
        """The state after ``text``; empty = ``text`` leaves the grammar."""
        for c in text:
            state = frozenset(s for st in state for s in self._step(st, c))
            if not state:
                break
        return state

    def complete(self, state: frozenset) -> bool:
        """True when the text so far is a whole answer (a template's last number counts once begun)."""
        def done(t: int, pos: int, n: int) -> bool:
            elements = self.templates[t]
            return pos == len(elements) or (pos == len(elements) - 1 and n >= 1 and len(elements[pos]) != 1)

        return any(done(t, pos, n) for t, pos, n, _ in state)

    def forced(self, state: frozenset) -> str:
        """The text every continuation of ``state`` starts with (up to the next choice or digit)."""
        if state not in self._forced:
            text, cur = "", state
            while cur and not self.complete(cur):
                nexts = {c for c in self.alphabet if self.advance(cur, c)}
                if len(nexts) != 1 or next(iter(nexts)).isdigit():
                    break
                c = nexts.pop()
                text, cur = text + c, self.advance(cur, c)
            self._forced[state] = text
        return self._forced[state]

    def fragments(self) -> list[str]:
        """Every answer shape with digits written as 0: a token can occur only inside one of them."""
        out = []
        for template in self.templates:
            slots = [[el] if len(el) == 1 else ["0", "00", "000"] if isinstance(el, str) else
                     [("0" * i + ("." + "0" * f if f else "")) for i in range(1, el[0] + 1) for f in range(el[1] + 1)]
                     for el in template]
            out.extend("".join(parts) for parts in product(*slots))
        return out


class GrammarLogitsProcessor:
    """Masks the logits so the text generated after the prompt stays inside :class:`AnswerGrammar`.

    ``scores``: (rows, vocab) float; ``input_ids``: (rows, prompt_len + generated). Rows that already
    ended are left alone (generate pads them). Allowed-token masks are cached per grammar state.
    """

    def __init__(self, token_strings: dict[int, str], grammar: AnswerGrammar, stop_ids: Sequence[int],
                 compact: bool = True):
        self.grammar, self.stop_ids, self.compact = grammar, list(stop_ids), compact
        self.token_strings = token_strings  # candidate id -> decoded text (only grammar fragments)
        self.prompt_len = 0
        self._masks: dict = {}

    def for_prompt(self, prompt_len: int) -> "GrammarLogitsProcessor":
        """A view for one generate call (prompt length of its padded batch) sharing the mask cache."""
        view = copy.copy(self)
        view.prompt_len = prompt_len
        return view

    def allowed(self, state: frozenset) -> list[int]:
        """Token ids allowed in ``state``.

        ``compact``: in forced stretches (text fixed until the next choice) only the longest tokens, so
        an answer takes few steps whatever the model prefers; the text is the same, only its split
        into tokens can differ from the tokenizer's own. Off: every token that keeps the grammar.
        """
        ok = {i: s for i, s in self.token_strings.items() if self.grammar.advance(state, s)}
        keep = [] if self.compact else list(ok)
        for i, s in ok.items() if self.compact else ():
            forced = self.grammar.forced(self.grammar.advance(state, s))
            # a token is dominated when a longer allowed token covers it plus forced text only
            if not any(len(o) > len(s) and o.startswith(s) and forced.startswith(o[len(s):]) for o in ok.values()):
                keep.append(i)
        if self.grammar.complete(state) or not keep:
            keep += self.stop_ids
        return keep

    def mask(self, state: frozenset, vocab: int, device: torch.device) -> torch.Tensor:
        key = (state, vocab, str(device))
        if key not in self._masks:
            m = torch.ones(vocab, dtype=torch.bool)
            m[[i for i in self.allowed(state) if i < vocab]] = False
            self._masks[key] = m.to(device)
        return self._masks[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        stops = set(self.stop_ids)
        for row, ids in enumerate(input_ids[:, self.prompt_len:].tolist()):
            if stops.intersection(ids):
                continue
            state = self.grammar.start
            for i in ids:
                state = self.grammar.advance(state, self.token_strings.get(i, "\x00"))
            scores[row] = scores[row].masked_fill(self.mask(state, scores.shape[-1], scores.device), float("-inf"))
        return scores


def decoded_tokens(tokenizer, grammar: AnswerGrammar) -> dict[int, str]:
    """id -> text of every vocabulary entry that can occur inside an answer.

    Each id is decoded after an anchor digit and the anchor's text removed, so tokenizers that drop a
    leading space when a token is decoded alone (SentencePiece) still give the right text.
    """
    anchor = tokenizer.encode("0", add_special_tokens=False)[-1:]
    head = tokenizer.decode(anchor)
    vocab = sorted(set(tokenizer.get_vocab().values()))
    texts = tokenizer.batch_decode([anchor + [i] for i in vocab], skip_special_tokens=False)
    fragments = grammar.fragments()
    special = set(tokenizer.all_special_ids)
    out = {}
    for i, text in zip(vocab, texts):
        if i in special or not text.startswith(head) or len(text) == len(head):
            continue
        s = text[len(head):]
        shape = "".join("0" if c.isdigit() else c for c in s)
        if any(shape in f for f in fragments):
            out[i] = s
    return out
