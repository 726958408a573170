"""QwenVLChatPolicy without the real remote-code model: a stand-in model and tokenizer (defined HERE only)
exercise the prompt, the temporary JPEG lifecycle, the generation arguments and the answer handling."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from segagent_backend.agent.policies.base import Observation
from segagent_backend.agent.policies.qwen_vl_chat import QwenVLChatPolicy, load_qwen_vl_chat
from segagent_backend.agent.protocol import QWEN_VL_CHAT_PROMPT, answer_prefix
from segagent_backend.agent.loading import ModelLoadError

SPECIALS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


class CharTokenizer:
    """Stand-in for Qwen-VL's tiktoken tokenizer: one id per character (10 + code point), 3 specials."""

    def __init__(self, left_padding: bool = True):
        self.eod_id, self.im_start_id, self.im_end_id = 0, 1, 2
        self.pad_token_id = None
        self._left = left_padding
        self._side = "right"
        self.all_special_ids = list(SPECIALS.values())

    @property
    def padding_side(self):
        return self._side

    @padding_side.setter
    def padding_side(self, side):
        if not self._left:
            raise ValueError("this tokenizer cannot pad on the left")
        self._side = side

    def encode(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            special = next((s for s in SPECIALS if text.startswith(s, i)), None)
            ids.append(SPECIALS[special] if special else 10 + ord(text[i]))
            i += len(special) if special else 1
        return ids

    def __call__(self, texts, return_tensors="pt", padding="longest"):
        rows = [self.encode(t) for t in texts]
        width = max(map(len, rows))
        ids = [[self.pad_token_id] * (width - len(r)) + r for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    def decode(self, ids, skip_special_tokens=False):
        names = {v: k for k, v in SPECIALS.items()}
        return "".join("" if i in names and skip_special_tokens else names.get(i) or chr(i - 10) for i in ids)

    def batch_decode(self, rows, skip_special_tokens=False):
        return [self.decode(r, skip_special_tokens) for r in rows]

    def convert_tokens_to_ids(self, token):
        return SPECIALS[token]

    def get_vocab(self):
        return {**SPECIALS, **{chr(c): 10 + c for c in range(32, 127)}}


class StandInModel(torch.nn.Module):
    """Stand-in for QWenLMHeadModel.generate: checks the overlay files exist while it runs, then writes
    ``reply`` (or, with a logits processor, argmax of random scores through it) after each prompt."""

    def __init__(self, tokenizer, reply="87  Negative point: (500, 250)"):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.reply = tokenizer, reply
        self.generation_config = object()
        self.calls: list[dict] = []

    def generate(self, input_ids, attention_mask=None, **kwargs):
        prompts = self.tok.batch_decode(input_ids.tolist())
        paths = [re.search(r"<img>(.*?)</img>", p).group(1) for p in prompts]
        sizes = []
        for path in paths:  # the model opens the files during generate: they must exist
            with Image.open(path) as im:
                assert im.format == "JPEG"
                sizes.append(im.size)
        self.calls.append(dict(kwargs, prompts=prompts, paths=paths, sizes=sizes, attention_mask=attention_mask))
        k = kwargs["num_return_sequences"]
        ids = input_ids.repeat_interleave(k, dim=0)
        processors = kwargs.get("logits_processor")
        if not processors:
            new = torch.tensor([self.tok.encode(self.reply) + [self.tok.im_end_id]] * ids.shape[0])
            return torch.cat([ids, new], dim=1)
        gen = torch.Generator().manual_seed(0)
        for _ in range(kwargs["max_new_tokens"]):
            scores = torch.randn(ids.shape[0], 200, generator=gen)
            for p in processors:
                scores = p(ids, scores)
            done = (ids[:, input_ids.shape[1]:] == self.tok.im_end_id).any(dim=1)
            nxt = torch.where(done, torch.full_like(done, self.tok.eod_id, dtype=torch.long), scores.argmax(-1))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if done.all():
                break
        return ids


def observations():
    rng = np.random.default_rng(1)
    sizes = [(40, 60), (80, 50), (30, 30)]
    return [Observation(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), np.ones((h, w), bool), "thing" + " big" * i)
            for i, (h, w) in enumerate(sizes)]


def make(left_padding=True, **kwargs):
    tok = CharTokenizer(left_padding)
    return QwenVLChatPolicy(StandInModel(tok), tok, **kwargs), tok


def test_prompt_is_the_released_one_plus_the_forced_prefix():
    policy, _ = make()
    assert policy.prompt("/t/x.jpg", "fat legs") == QWEN_VL_CHAT_PROMPT.format(image="/t/x.jpg", caption="fat legs") \
        + answer_prefix("fat legs")
    policy.forced_prefix = False
    assert policy.prompt("/t/x.jpg", "fat legs").endswith("<|im_start|>assistant\n")
    policy.close()


def test_batched_greedy_answers_and_temp_files_removed():
    policy, tok = make(constrained=False)
    assert policy.batched and tok.pad_token_id == tok.eod_id
    obs = observations()
    result = policy.propose(obs, k=1)
    call = policy.model.calls[-1]
    assert len(policy.model.calls) == 1 and len(call["paths"]) == 3
    assert len(set(call["paths"])) == 3 and all(os.path.dirname(p) == policy.workdir for p in call["paths"])
    assert call["sizes"] == [o.size for o in obs]  # original sizes: coordinates are relative to them
    assert call["do_sample"] is False and call["stop_words_ids"] == [[2], [1]]
    assert call["attention_mask"][0].tolist().count(0) > 0  # the shorter prompts are left padded
    assert all(not os.path.exists(p) for p in call["paths"]) and os.listdir(policy.workdir) == []
    for o, (answer,) in zip(obs, result):
        w, h = o.size
        assert answer.text == answer_prefix(o.expression) + "87  Negative point: (500, 250)"
        assert not answer.click.positive and answer.iou_estimate == 0.87
        assert (answer.click.x, answer.click.y) == (round(0.25 * w), round(0.5 * h))  # (row, col) on 0..999
    assert policy.stats.calls == 1 and policy.stats.answers == 3
    assert policy.stats.generated_tokens == 3 * (len("87  Negative point: (500, 250)") + 1)
    workdir = policy.workdir
    policy.close()
    assert not os.path.exists(workdir)
    policy.close()  # idempotent


def test_sampling_and_one_by_one_without_left_padding():
    policy, _ = make(left_padding=False, constrained=False, temperature=0.7)
    assert not policy.batched
    result = policy.propose(observations(), k=3)
    assert [len(a) for a in result] == [3, 3, 3] and len(policy.model.calls) == 3
    call = policy.model.calls[-1]
    assert call["do_sample"] and call["temperature"] == 0.7 and call["num_return_sequences"] == 3
    assert call["top_k"] == 0 and call["top_p"] == 1.0
    policy.close()


def test_files_deleted_when_generate_fails():
    policy, _ = make(constrained=False)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    policy.model.generate = broken
    with pytest.raises(RuntimeError):
        policy.propose(observations())
    assert os.listdir(policy.workdir) == []
    policy.close()


def test_malformed_and_stop_answers_are_counted():
    policy, tok = make(constrained=False, forced_prefix=False)
    policy.model.reply = "I cannot see it"
    (answer,), *_ = policy.propose(observations())
    assert answer.stop and answer.malformed and policy.stats.malformed == 3
    assert policy.model.calls[-1]["max_new_tokens"] > policy.max_new_tokens  # room for the echo
    policy.close()


def test_constrained_decoding_through_the_stand_in():
    # one character per token: "100  Positive point: (999, 999)" + stop can take 32 steps
    with make(max_new_tokens=32)[0] as policy:
        result = policy.propose(observations(), k=2)
        # well formed: a click, or the estimate alone (a stop the grammar admits)
        assert all(not a.malformed and a.iou_estimate is not None for answers in result for a in answers)
        assert policy.stats.malformed == 0, [a.text for answers in result for a in answers]


def test_loader_errors_name_the_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_qwen_vl_chat(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="modeling_qwen.py"):
        load_qwen_vl_chat(tmp_path)
    for name in ("modeling_qwen.py", "tokenization_qwen.py"):
        (tmp_path / name).write_text("")
    with pytest.raises(ModelLoadError, match="transformers"):  # the installed 5.x cannot run the remote code
        load_qwen_vl_chat(tmp_path)
