"""SegAgent-Qwen policy on the native Qwen-VL-Chat: a tiny random checkpoint under the release's names, loaded
by the production loader (no .py file in the folder), driven through prompts, the in-memory JPEG round trip,
batched generation, the grammar and the CLI.

Needs the real ``qwen.tiktoken`` (the tokenizer's special ids are fixed by its 151,643 ranks); skipped with the
reason when ``../shared/oracles/qwen-vl-chat`` is absent.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.oracle.tiny_qwen import ORACLE_CODE, oracle_code_dir

pytestmark = pytest.mark.skipif(oracle_code_dir() is None, reason=f"qwen.tiktoken absent at {ORACLE_CODE}")
pytest.importorskip("tiktoken", reason="tiktoken is not installed (the native tokenizer needs it)")

from segagent_backend.agent.loading import ModelLoadError  # noqa: E402
from segagent_backend.agent.policies import build_policy  # noqa: E402
from segagent_backend.agent.policies.base import Observation  # noqa: E402
from segagent_backend.agent.policies.qwen_vl_chat import QwenVLChatPolicy  # noqa: E402
from segagent_backend.agent.protocol import QWEN_VL_CHAT_PROMPT, answer_prefix  # noqa: E402
from segagent_backend.agent.qwen_native import preprocess_images  # noqa: E402
from segagent_backend.agent.types import Click  # noqa: E402

from tests.conftest import make_disk_image  # noqa: E402


@pytest.fixture(scope="module")
def folder(tiny_qwen_vl_chat):
    return tiny_qwen_vl_chat


@pytest.fixture(scope="module")
def policy(folder):
    return build_policy("qwen-vl-chat", str(folder), device="cpu")


def observations(n: int = 3) -> list[Observation]:
    image, mask = make_disk_image()
    masks = [np.zeros_like(mask), mask, np.roll(mask, 9, axis=1)]
    captions = ["the red disk", "café ünïcode <ref>tag</ref>", "a disk"]
    return [Observation(image, masks[i % 3], captions[i % 3], release=True, episode=i) for i in range(n)]


def test_loads_without_code_from_the_folder(folder, policy):
    assert not list(folder.glob("*.py")) and isinstance(policy, QwenVLChatPolicy)
    assert policy.model_version == folder.name and not policy.allow_stop


def test_prompt_is_the_released_one_plus_the_forced_prefix(policy):
    text = policy.prompt("the dog")
    assert text == QWEN_VL_CHAT_PROMPT.format(image="image.jpg", caption="the dog") + answer_prefix("the dog")
    ids = policy.tokenizer.encode(text)
    start = ids.index(151857)
    assert ids[start + 257] == 151858  # the 258-id image span the features are spliced into


def test_the_overlay_reaches_the_model_as_the_release_jpeg_without_files(policy, tmp_path):
    obs = observations(1)[0]
    path = tmp_path / "overlay.jpg"
    Image.fromarray(obs.overlay).save(path)  # what the release writes (PIL default quality), then reads back
    assert torch.equal(policy.pixels([obs]), preprocess_images([str(path)]))


def test_batched_greedy_equals_one_by_one_and_every_answer_is_a_click(policy):
    obs = observations(3)
    together = policy.propose(obs)
    alone = [policy.propose([o])[0] for o in obs]
    assert [[a.text for a in row] for row in together] == [[a.text for a in row] for row in alone]
    for o, row in zip(obs, together):
        assert row[0].text.startswith(answer_prefix(o.expression))
        assert row[0].click is not None and not row[0].malformed  # no stop: the release never trained one


def test_sampled_candidates(policy):
    rows = policy.propose(observations(2), k=3)
    assert [len(r) for r in rows] == [3, 3] and all(a.click is not None for r in rows for a in r)


def test_loader_errors_name_the_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="nowhere"):
        build_policy("qwen-vl-chat", str(tmp_path / "nowhere"), device="cpu")


def test_segagent_predict_runs_the_release_loop_on_it(folder, tmp_path):
    image, _ = make_disk_image()
    Image.fromarray(image).save(tmp_path / "photo.png")
    env = {**os.environ, "SEGAGENT_POLICY": str(folder), "SEGAGENT_POLICY_KIND": "qwen-vl-chat",
           "MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "segagent_backend.cli", "predict", "--image", "photo.png",
                           "--expression", "the red disk", "--json", "out.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["model_version"] and out["stop_reason"] in ("max steps", "malformed answer", "policy stopped")
    assert len(out["trajectory"]) >= 1 or out["stop_reason"] != "max steps"


# --- free decoding: the release's own call (SEGAGENT_DECODING=free) ------------------------------------------

@pytest.fixture(scope="module")
def short_config_folder(folder, tmp_path_factory):
    """The tiny checkpoint with its own generation_config.json saying max_new_tokens 6 (and sampling, as
    Qwen-VL-Chat's says: the release overrides it with do_sample=False)."""
    import shutil

    copy = tmp_path_factory.mktemp("short-config") / folder.name
    shutil.copytree(folder, copy)
    config = json.loads((copy / "generation_config.json").read_text())
    config.update(max_new_tokens=6, do_sample=True, top_p=0.3, top_k=0)
    (copy / "generation_config.json").write_text(json.dumps(config))
    return copy


def test_free_decoding_is_the_releases_generate_call_answer_by_answer(short_config_folder):
    from transformers import GenerationConfig

    from segagent_backend.agent.qwen_native.tokenizer import EOD_ID

    free = build_policy("qwen-vl-chat", str(short_config_folder), device="cpu", decoding="free")
    assert free.decoding == "free" and not free.forced_prefix and not free.constrained
    assert free.prompt("the dog") == QWEN_VL_CHAT_PROMPT.format(image="image.jpg", caption="the dog")  # ends "assistant\n"
    obs = observations(3)
    got = [row[0].text for row in free.propose(obs)]  # one batched, left-padded call
    config = GenerationConfig.from_pretrained(str(short_config_folder))  # the folder's own config, as the release
    for o, text in zip(obs, got):  # the release: one row per call, decoded with its special tokens
        enc = free.tokenizer([free.prompt(o.expression)], return_tensors="pt")
        out = free.model.generate(enc["input_ids"], pixel_values=free.pixels([o]).to(free.model.dtype),
                                  generation_config=config, do_sample=False, pad_token_id=EOD_ID)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        assert len(new) <= 6  # the checkpoint's max_new_tokens, not ours
        assert text == free.tokenizer.decode(new, skip_special_tokens=False)


def test_free_answers_keep_the_release_text_up_to_the_forced_eos(policy):
    from segagent_backend.agent.policies.base import PolicyStats
    from segagent_backend.agent.policies.text import decode_answers
    from segagent_backend.agent.qwen_native.tokenizer import EOD_ID, IM_END_ID

    tok = policy.tokenizer
    body = tok.encode("<ref>the red disk</ref> Current IOU: 10  Positive point: (500, 250) Current IOU: 60",
                      add_special_tokens=False)
    rows = [body + [IM_END_ID, EOD_ID, EOD_ID, EOD_ID], body[:5]]  # a padded row; a row cut by the budget
    obs = observations(2)
    (first,), (second,) = decode_answers(tok, rows, obs, 1, policy.stop_ids, False, policy.convention, PolicyStats(),
                                         eos_id=EOD_ID)
    assert first.text.endswith("Current IOU: 60<|im_end|><|endoftext|>") and "<ref>the red disk</ref>" in first.text
    assert first.click == Click(40.0, 60.0, True)  # (500, 250) on 160 x 120: row 60, col 40
    assert second.click is None and second.malformed
