"""What the MLLM policies share: how an answer is decoded (forced prefix, grammar, greedy or sampled)."""
from __future__ import annotations

import time
import warnings
from dataclasses import replace
from typing import Optional, Sequence

from ..protocol import SEGAGENT_QWEN, Answer, CoordinateConvention, answer_prefix, parse_answer
from .base import Observation, Policy
from .canonical import NotCanonicalError, answer_processor
from .decoding import DECODINGS
from .grammar import AnswerGrammar, GrammarLogitsProcessor, decoded_tokens


def decoding_flags(decoding: Optional[str], forced_prefix: bool, constrained: Optional[bool]) -> tuple[bool, Optional[bool]]:
    """(forced_prefix, constrained) for ``decoding``: ``free`` = neither (the model writes its whole answer,
    nothing forced or masked, as the release decodes), ``grammar`` = both; None keeps the two flags given."""
    if decoding is None:
        return forced_prefix, constrained
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}, got {decoding!r}")
    return (False, False) if decoding == "free" else (True, True)


class TextAnswerPolicy(Policy):
    """A policy that writes SegAgent answers as text with a tokenizer.

    ``forced_prefix``: the answer's echo ``<ref>CAPTION</ref> Current IOU: `` is part of the prompt, so
    the model writes only the estimate and the click. ``constrained`` (default: on with the forced
    prefix, which it needs) restricts generation to the answer grammar. ``decoding`` (``free`` or
    ``grammar``, SEGAGENT_DECODING) sets both at once: free decoding forces and masks nothing, so the
    model only ever writes token sequences it chose itself. k == 1 is greedy; k > 1 samples at
    ``temperature`` with top-k/top-p off (tree search needs real samples). Subclasses set
    ``self.stop_ids`` (end-of-turn ids) before the grammar is first used.
    """

    stop_ids: list[int]
    #: the grammar admits the estimate alone (a stop); False = clicks only, as the released weights
    #: answer (the benchmarks use it: a random model would take the stop at once)
    allow_stop: bool = True

    def __init__(self, tokenizer, name: str, convention: CoordinateConvention = SEGAGENT_QWEN,
                 max_new_tokens: int = 24, forced_prefix: bool = True, temperature: float = 1.0,
                 constrained: Optional[bool] = None, compact_literals: bool = True, decoding: Optional[str] = None):
        super().__init__()
        forced_prefix, constrained = decoding_flags(decoding, forced_prefix, constrained)
        constrained = forced_prefix if constrained is None else constrained
        if constrained and not forced_prefix:
            raise ValueError("constrained decoding starts after the forced prefix: set forced_prefix=True")
        self.tokenizer, self._name, self.convention = tokenizer, name, convention
        self.max_new_tokens, self.forced_prefix, self.temperature = max_new_tokens, forced_prefix, temperature
        self.constrained, self.compact_literals = constrained, compact_literals
        self._grammar: Optional[GrammarLogitsProcessor] = None

    @property
    def model_version(self) -> str:
        return self._name

    @property
    def decoding(self) -> str:
        """``grammar`` when generation is constrained to the answer grammar, else ``free``."""
        return "grammar" if self.constrained else "free"

    def grammar(self):
        """The canonical-token grammar, built on first use (encodes every field value once, ~0.1-1 s).

        For every answer it admits, only the tokens ``encode(answer)`` gives (what fine-tuning trains on;
        on Qwen's tokenizers also how ``encode(prefix + answer)`` splits it); ``allow_stop`` admits the
        estimate alone. A tokenizer whose encodings cannot be assembled from field pieces falls back to
        the text-level grammar (any split of an allowed text), with a warning.
        """
        if self._grammar is None:
            try:
                self._grammar = answer_processor(self.tokenizer, self.convention, self.stop_ids, self.allow_stop)
            except NotCanonicalError as exc:
                warnings.warn(f"{self.model_version}: constrained decoding admits any token split: {exc}")
                grammar = AnswerGrammar(self.convention, self.allow_stop)
                self._grammar = GrammarLogitsProcessor(decoded_tokens(self.tokenizer, grammar), grammar,
                                                       self.stop_ids, self.compact_literals)
        return self._grammar

    def fed_prefix(self, expression: str, head: Optional[str] = None) -> str:
        """What the prompt ends with and every answer text starts with: the forced echo, or without it
        only the release's re-fed ``<ref>..</ref><box>..</box>`` after an answer with a box."""
        return answer_prefix(expression, head) if self.forced_prefix else (head or "")

    def release_eos_id(self) -> Optional[int]:
        """The eos after which free answers are cut and decoded with their special tokens, as the release
        reads its answers; None (the default): answers are decoded without special tokens."""
        return None

    def sampling_kwargs(self, k: int) -> dict:
        if k == 1:
            return dict(do_sample=False, temperature=None, top_k=None, top_p=None)
        return dict(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0)

    def echo_tokens(self, observations: Sequence[Observation]) -> int:
        """Extra token budget when the model writes the echo itself, so it cannot eat the answer's budget."""
        if self.forced_prefix:
            return 0
        return max(len(self.tokenizer.encode(answer_prefix(o.expression), add_special_tokens=False))
                   for o in observations)

    def decoded(self, rows: list[list[int]], observations: Sequence[Observation], k: int,
                started: float) -> list[list[Answer]]:
        """One ``propose`` call's generated ids (prompt removed) -> its answers, counted in ``stats`` with
        the seconds since ``started`` (``time.perf_counter()``)."""
        result = decode_answers(self.tokenizer, rows, observations, k, self.stop_ids, self.forced_prefix,
                                self.convention, self.stats, self.release_eos_id())
        self.stats.calls += 1
        self.stats.answers += len(observations) * k
        self.stats.seconds += time.perf_counter() - started
        return result


def decode_answers(tokenizer, rows: list[list[int]], observations: Sequence[Observation], k: int,
                   stop_ids: Sequence[int], forced_prefix: bool, convention: CoordinateConvention,
                   stats, eos_id: Optional[int] = None) -> list[list[Answer]]:
    """Generated ids (``len(observations) * k`` rows grouped by observation, prompt removed) -> answers.

    Each row is cut at its first stop id; generated tokens (stop included, padding excluded) and
    malformed answers are added to ``stats``. A row cut by the token budget without a click is
    malformed: it is not a deliberate stop.

    ``eos_id`` (the release's text): each row is instead cut just after its first ``eos_id`` and decoded
    with its special tokens, as the release decodes its one-row ``generate`` (``skip_special_tokens=False``:
    ``...<|im_end|><|endoftext|>``; the rest of a batched row is padding).
    """
    stops = set(stop_ids)
    result: list[list[Answer]] = []
    for i, obs in enumerate(observations):
        width, height = obs.size
        prefix = answer_prefix(obs.expression, obs.answer_head) if forced_prefix else (obs.answer_head or "")
        answers = []
        for ids in rows[i * k:(i + 1) * k]:
            end = next((j for j, t in enumerate(ids) if t in stops), None)
            stats.generated_tokens += len(ids) if end is None else end + 1
            if eos_id is None:
                text = prefix + tokenizer.decode(ids[:end], skip_special_tokens=True)
            else:
                cut = next((j + 1 for j, t in enumerate(ids) if t == eos_id), len(ids))
                text = prefix + tokenizer.decode(ids[:cut], skip_special_tokens=False)
            answer = parse_answer(text, width, height, convention, strict=obs.release)
            if end is None and answer.click is None:
                answer = replace(answer, malformed=True)
            stats.malformed += int(answer.malformed)
            answers.append(answer)
        result.append(answers)
    return result
