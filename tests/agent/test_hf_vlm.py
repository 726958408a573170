"""HFVLMPolicy on tiny random Qwen2-VL, Qwen2.5-VL and LLaVA checkpoints loaded by the production loader."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests import tiny_vlms  # noqa: E402
from segagent_backend.agent.policies.base import Observation  # noqa: E402
from segagent_backend.agent.policies.grammar import AnswerGrammar, decoded_tokens  # noqa: E402
from segagent_backend.agent.policies.hf_vlm import HFVLMPolicy, load_hf_vlm  # noqa: E402
from segagent_backend.agent.protocol import (  # noqa: E402
    SEGAGENT_LLAVA,
    SEGAGENT_QWEN,
    answer_prefix,
    format_answer,
    parse_answer,
)
from segagent_backend.agent.loading import ModelLoadError  # noqa: E402
from segagent_backend.agent.types import Click  # noqa: E402

SIZES = [(40, 60), (80, 50), (30, 30)]  # (H, W): three different image sizes in one batch


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_qwen2_vl, tiny_llava):
    """name -> (model, processor), each built by tests/tiny_vlms.py and loaded through load_hf_vlm.

    Qwen2-VL and LLaVA are the session's shared folders (named after their MAKERS key)."""
    shared = {"qwen2_vl": tiny_qwen2_vl, "llava": tiny_llava}
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {name: load_hf_vlm(shared[name] if name in shared else make(root / name))
            for name, make in tiny_vlms.MAKERS.items()}


def observations(expression: str = "a red disk") -> list[Observation]:
    rng = np.random.default_rng(0)
    out = []
    for h, w in SIZES:
        mask = np.zeros((h, w), bool)
        mask[h // 4: h // 2, w // 4: w // 2] = True
        out.append(Observation(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), mask, expression))
    return out


def assert_shape(result, k):
    assert len(result) == len(SIZES)
    assert all(len(answers) == k for answers in result)


@pytest.mark.parametrize("name", list(tiny_vlms.MAKERS))
def test_loader_gives_a_real_processor(loaded, name):
    from transformers import ProcessorMixin

    model, processor = loaded[name]
    assert isinstance(processor, ProcessorMixin) and processor.image_processor is not None
    assert not model.training and model.dtype.is_floating_point
    assert HFVLMPolicy(model, processor).model_version == name


def test_loader_refuses_bare_tokenizer_and_missing_folder(tmp_path):
    bare = tiny_vlms.make_bare_tokenizer_folder(tmp_path / "bare")
    with pytest.raises(ModelLoadError, match="bare tokenizer"):
        load_hf_vlm(bare)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_hf_vlm(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_hf_vlm(tmp_path / "empty")


@pytest.mark.parametrize("name", list(tiny_vlms.MAKERS))
def test_constrained_greedy_and_sampling(loaded, name):
    model, processor = loaded[name]
    policy = HFVLMPolicy(model, processor)
    obs = observations()
    greedy = policy.propose(obs, k=1)
    assert_shape(greedy, 1)
    assert [a[0].text for a in policy.propose(obs, k=1)] == [a[0].text for a in greedy]  # deterministic
    sampled = policy.propose(obs, k=3)
    assert_shape(sampled, 3)
    for o, answers in zip(obs, greedy + sampled):
        for answer in answers:
            # constrained decoding: every answer is well formed: a click, or the estimate alone (a stop)
            assert not answer.malformed and (answer.click is not None or answer.text.rstrip()[-1].isdigit()), answer.text
            assert answer.text.startswith(answer_prefix(o.expression))
            assert 0 <= answer.iou_estimate <= 1
    for o, answers in zip(obs * 2, greedy + sampled):
        w, h = o.size
        assert all(0 <= a.click.x < w and 0 <= a.click.y < h for a in answers if a.click is not None)
    assert policy.stats.calls == 3 and policy.stats.answers == 3 + 3 + 9
    assert policy.stats.malformed == 0 and policy.stats.generated_tokens > 0 and policy.stats.seconds > 0


@pytest.mark.parametrize("name", list(tiny_vlms.MAKERS))
def test_unconstrained_never_crashes_and_counts_malformed(loaded, name):
    model, processor = loaded[name]
    for forced in (True, False):
        policy = HFVLMPolicy(model, processor, forced_prefix=forced, constrained=False, max_new_tokens=12)
        for k in (1, 3):
            result = policy.propose(observations(), k=k)
            assert_shape(result, k)
        flagged = sum(a.malformed for answers in result for a in answers)
        assert policy.stats.malformed >= flagged and policy.stats.answers == 12
        assert policy.stats.generated_tokens > 0


def test_forced_prefix_saves_tokens(loaded):
    model, processor = loaded["qwen2_vl"]
    expression = "the brown chicken in front of more chickens"
    with_prefix = HFVLMPolicy(model, processor, forced_prefix=True)
    echo = HFVLMPolicy(model, processor, forced_prefix=False)
    assert echo.prompt(expression) + answer_prefix(expression) == with_prefix.prompt(expression)
    count = lambda text: len(processor.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    answers = with_prefix.propose(observations(expression))
    # the echo is not generated: each answer costs only its own (canonical) tokens and the end of turn,
    # whatever the random model answers (how long an unconstrained random echo runs is not ours to assert)
    body = len(answer_prefix(expression))
    assert with_prefix.stats.generated_tokens == sum(count(a.text[body:]) + 1 for (a,) in answers)
    # the same real answer costs the echo's tokens more when the model has to write it
    real = format_answer(expression, 0.87, Click(20, 30, False), 60, 40)
    assert count(real) - count(real[len(answer_prefix(expression)):]) >= count(answer_prefix(expression)) - 1
    assert with_prefix.stats.generated_tokens <= 3 * with_prefix.max_new_tokens and with_prefix.stats.malformed == 0


def test_constrained_needs_forced_prefix(loaded):
    model, processor = loaded["llava"]
    with pytest.raises(ValueError, match="forced_prefix"):
        HFVLMPolicy(model, processor, forced_prefix=False, constrained=True)


@pytest.mark.parametrize("convention", [SEGAGENT_QWEN, SEGAGENT_LLAVA])
def test_grammar_accepts_released_answers_and_rejects_others(convention):
    grammar = AnswerGrammar(convention)
    prefix = answer_prefix("fat legs")
    for iou, click in [(0, Click(10, 20, True)), (0.93, Click(99, 0, False)), (1.0, Click(0, 79, True))]:
        text = format_answer("fat legs", iou, click, 100, 80, convention)[len(prefix):]
        state = grammar.advance(grammar.start, text)
        assert state and grammar.complete(state), text
    for bad in ["101  Positive point: (1, 2)", "07  Positive", "5 Positive", "5  Maybe", "5  Negative point: (1,2)"]:
        state = grammar.advance(grammar.start, bad)
        assert not (state and grammar.complete(state)), bad
    # after the estimate and the separator, only the two actions
    assert grammar.forced(grammar.advance(grammar.start, "87 ")) == " "
    assert grammar.forced(grammar.advance(grammar.start, "87  N")) == "egative point: ("


@pytest.mark.parametrize("compact", [False, True])
def test_teacher_forced_answer_passes_the_logits_processor(loaded, compact):
    """A real answer fed token by token: the processor never masks the text's continuation, ends with a stop."""
    import torch

    model, processor = loaded["qwen2_vl"]
    policy = HFVLMPolicy(model, processor, compact_literals=compact)
    grammar = policy.grammar()
    target = format_answer("a red disk", 0.42, Click(30, 10, False), 60, 40)[len(answer_prefix("a red disk")):]
    vocab = model.config.text_config.vocab_size
    canonical = processor.tokenizer.encode(target, add_special_tokens=False)
    ids: list[int] = []
    while True:
        text = "".join(grammar.token_strings[i] for i in ids)
        scores = grammar.for_prompt(0)(torch.tensor([ids], dtype=torch.long), torch.zeros(1, vocab))
        allowed = scores[0].isfinite().nonzero().flatten().tolist()
        if text == target:
            assert set(allowed) <= set(policy.stop_ids)
            break
        if not compact:  # every split is allowed, the tokenizer's own included
            ids.append(canonical[len(ids)])
            assert ids[-1] in allowed, text
            continue
        # compact: the longest tokens through fixed stretches; the text itself is always reachable
        nxt = [i for i in allowed if i in grammar.token_strings and target.startswith(text + grammar.token_strings[i])]
        assert nxt, text
        ids.append(max(nxt, key=lambda i: len(grammar.token_strings[i])))
    parsed = parse_answer(answer_prefix("a red disk") + processor.tokenizer.decode(ids), 60, 40)
    assert parsed.click == Click(30, 10, False) and parsed.iou_estimate == 0.42
    blank = Observation(np.zeros((40, 60, 3), np.uint8), np.zeros((40, 60), bool), "a red disk")
    clicks_only = HFVLMPolicy(model, processor, compact_literals=compact)
    clicks_only.allow_stop = False  # a random model may as well stop: here the grammar leaves it only clicks
    answer = clicks_only.propose([blank])[0][0]
    assert answer.click is not None and 0 <= answer.click.x < 60 and 0 <= answer.click.y < 40


def test_decoded_tokens_only_keeps_answer_fragments(loaded):
    _, processor = loaded["llava"]
    tokens = decoded_tokens(processor.tokenizer, AnswerGrammar(SEGAGENT_QWEN))
    assert tokens and all(set(s) <= set("0123456789 PositveNgapn:(),") for s in tokens.values())
    assert processor.tokenizer.convert_tokens_to_ids("<image>") not in tokens
