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
