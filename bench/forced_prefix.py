"""Forced prefix and constrained decoding on the tiny Qwen2-VL: tokens and time per policy step.

    .venv/bin/python -m bench.forced_prefix [--json OUT] [--repeats N] [--batch B] [--k K]

The tiny random Qwen2-VL (2 layers, hidden 32, built in a temporary folder by tests/tiny_vlms.py and
loaded through the production ``load_hf_vlm``) answers a batch of observations per step. Modes:
  echo            the model writes ``<ref>CAPTION</ref> Current IOU: `` itself (no forced prefix)
  forced          the echo is appended to the prompt; free decoding afterwards
  forced+grammar  forced prefix + the answer grammar (constrained decoding, the default): the tokenizer's
                  own split of every answer (grammar.CanonicalAnswers)
  forced+anysplit the text-level grammar used before (any split of an allowed text, longest tokens
                  through fixed stretches), for comparison
Per mode: generated tokens per answer, step time (median of ``repeats`` propose calls of ``batch``
observations, k answers each), the malformed-answer rate and the canonical rate (answers whose ids,
end of turn excluded, are ``tokenizer.encode`` of their own text). A random model never stops by itself,
so free decoding runs to the token budget: the token figures show the budget each mode needs, the
grammar's figure is the real answer length. Timing on a shared 2-core CPU: medians, rounds interleaved.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from segagent_backend.agent.policies.base import Observation
from segagent_backend.agent.policies.grammar import AnswerGrammar, GrammarLogitsProcessor, decoded_tokens
from segagent_backend.agent.policies.hf_vlm import HFVLMPolicy, load_hf_vlm
from segagent_backend.agent.protocol import answer_prefix, format_answer
from segagent_backend.agent.types import Click
from tests.tiny_vlms import make_tiny_qwen2_vl

from .common import record

CAPTION = "the brown chicken in front of more chickens"
MODES = {"echo": dict(forced_prefix=False, constrained=False),
         "forced": dict(forced_prefix=True, constrained=False),
         "forced+grammar": dict(forced_prefix=True, constrained=True),
         "forced+anysplit": dict(forced_prefix=True, constrained=True)}


def observations(batch: int) -> list[Observation]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(batch):
        h, w = 48 + 8 * i, 64 - 4 * i
        mask = np.zeros((h, w), bool)
        mask[h // 4: h // 2, w // 3: w // 2] = True
        out.append(Observation(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mask, CAPTION, step=1))
    return out


def run(repeats: int, batch: int, k: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load_hf_vlm(make_tiny_qwen2_vl(Path(tmp) / "qwen2_vl"), device="cpu")
    policies = {name: HFVLMPolicy(model, processor, **kw) for name, kw in MODES.items()}
    for policy in policies.values():
        policy.allow_stop = False  # a random model would stop at once: measure click answers
    legacy = AnswerGrammar(allow_stop=False)
    policies["forced+anysplit"]._grammar = GrammarLogitsProcessor(
        decoded_tokens(processor.tokenizer, legacy), legacy, policies["forced+anysplit"].stop_ids, compact=True)
    rows_of: dict = {}  # the last generate call's generated ids (prompt removed)
    generate = model.generate

    def recording_generate(*args, **kwargs):
        out = generate(*args, **kwargs)
        rows_of["last"] = out[:, kwargs["input_ids"].shape[1]:].tolist()
        return out

    model.generate = recording_generate
    canonical = {name: [0, 0] for name in MODES}  # [canonical, answers]

    def check(name: str, policy) -> None:
        stops = set(policy.stop_ids)
        for ids in rows_of["last"]:
            end = next((j for j, t in enumerate(ids) if t in stops), len(ids))
            text = processor.tokenizer.decode(ids[:end])
            canonical[name][0] += ids[:end] == processor.tokenizer.encode(text, add_special_tokens=False)
            canonical[name][1] += 1

    obs = observations(batch)
    for policy in policies.values():  # warm-up (and the grammar's one-time vocabulary pass)
        policy.propose(obs, k)
        policy.stats = type(policy.stats)()
    times = {name: [] for name in MODES}
    for _ in range(repeats):
        for name, policy in policies.items():  # interleaved: load changes hit every mode alike
            before = policy.stats.seconds
            policy.propose(obs, k)
            times[name].append(policy.stats.seconds - before)
            check(name, policy)
    def count(text: str) -> int:
        return len(processor.tokenizer.encode(text, add_special_tokens=False))

    echo_tokens = count(answer_prefix(CAPTION))
    # what a trained model writes for a real answer (+1: the end-of-turn token), with and without the echo
    real = format_answer(CAPTION, 0.87, Click(20, 30, positive=False), 64, 48)
    reference = dict(echo=count(real) + 1, forced=count(real[len(answer_prefix(CAPTION)):]) + 1)
    rows = {}
    for name, policy in policies.items():
        s = policy.stats
        rows[name] = dict(tokens_per_answer=s.generated_tokens / s.answers,
                          step_ms=1e3 * statistics.median(times[name]),
                          malformed_rate=s.malformed / s.answers, answers=s.answers,
                          canonical_rate=canonical[name][0] / canonical[name][1],
                          token_budget=policy.max_new_tokens + (0 if policy.forced_prefix else echo_tokens))
    return dict(model="tiny qwen2_vl (2 layers, hidden 32)", caption=CAPTION, echo_tokens=echo_tokens,
                real_answer=real, real_answer_tokens=reference,
                batch=batch, k=k, repeats=repeats, modes=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--k", type=int, default=1)
    args = parser.parse_args()
    result = run(args.repeats, args.batch, args.k)
    print(f"{result['model']}; caption echo = {result['echo_tokens']} tokens; batch {args.batch}, k {args.k}, "
          f"{args.repeats} steps per mode")
    print(f"{'mode':<16}{'budget':>8}{'tokens/answer':>15}{'step ms':>10}{'malformed':>11}{'canonical':>11}")
    for name, row in result["modes"].items():
        print(f"{name:<16}{row['token_budget']:>8}{row['tokens_per_answer']:>15.1f}{row['step_ms']:>10.1f}"
              f"{100 * row['malformed_rate']:>10.0f}%{100 * row['canonical_rate']:>10.0f}%")
    ref = result["real_answer_tokens"]
    print(f"a real answer ({result['real_answer']!r}) + end of turn: {ref['echo']} tokens written by the model, "
          f"{ref['forced']} with the forced prefix")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    record("forced_prefix", {"modes": result["modes"], "real answer tokens (echo)": ref["echo"],
                             "real answer tokens (forced prefix)": ref["forced"]}, setup=vars(args))


if __name__ == "__main__":
    main()
