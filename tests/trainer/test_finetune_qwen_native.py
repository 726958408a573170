"""Fine-tuning the native Qwen-VL-Chat (SegAgent-Qwen): trainer/finetune.py's native path,
trainer/sft_data.py's native encoding and segagent_backend/agent/qwen_native/save.py.

A tiny random checkpoint under the release's names (tests/oracle/tiny_qwen.py) is trained with LoRA and
fully, exported in the release's layout and loaded back through the production loader and policy.

Needs the real ``qwen.tiktoken`` (the tokenizer's special ids are fixed by its 151,643 ranks); skipped with the
reason when ``../shared/oracles/qwen-vl-chat`` is absent.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.oracle.tiny_qwen import ORACLE_CODE, oracle_code_dir  # noqa: E402

pytestmark = [pytest.mark.skipif(oracle_code_dir() is None, reason=f"qwen.tiktoken absent at {ORACLE_CODE}"),
              pytest.mark.usefixtures("one_torch_thread")]
pytest.importorskip("tiktoken", reason="tiktoken is not installed (the native tokenizer needs it)")
pytest.importorskip("peft", reason="peft is not installed (LoRA fine-tuning needs it)")

from segagent_backend.agent.policies import build_policy  # noqa: E402
from segagent_backend.agent.policies.base import Observation  # noqa: E402
from segagent_backend.agent.policies.qwen_vl_chat import QwenVLChatPolicy  # noqa: E402
from segagent_backend.agent.protocol import answer_prefix  # noqa: E402
from segagent_backend.agent.qwen_native import load_qwen_vl_chat_native, save_qwen_vl_chat_native  # noqa: E402
from segagent_backend.agent.qwen_native.loader import iter_tensors, weight_files  # noqa: E402
from segagent_backend.agent.qwen_native.tokenizer import EOD_ID, IM_END_ID  # noqa: E402
from segagent_backend.agent.types import Click  # noqa: E402
from tests.conftest import make_disk_image  # noqa: E402
from trainer.finetune import FinetuneConfig, _export_native, finetune  # noqa: E402
from trainer.native_sft import NativeSFTModel, is_qwen_vl_chat, prepare_native, uses_native_path  # noqa: E402
from trainer.samples import step_samples  # noqa: E402
from trainer.sft_data import IGNORE_INDEX, collate, encode_native_sample  # noqa: E402

LM_LINEARS = (".attn.c_attn.", ".attn.c_proj.", ".mlp.w1.", ".mlp.w2.", ".mlp.c_proj.")


@pytest.fixture(scope="module")
def base(tiny_qwen_vl_chat):
    return tiny_qwen_vl_chat  # shared read-only: training and exports write to their own folders


@pytest.fixture(scope="module")
def samples():
    """Two clicks on a disk (the second with the release's overlay arithmetic) + one with a longer caption."""
    image, mask = make_disk_image()
    half = mask.copy()
    half[:, : mask.shape[1] // 2] = False
    out = step_samples(image, "the red disk", [np.zeros_like(mask), half], [0.0, 0.5],
                       [Click(30, 20, True), Click(10, 5, False)], name="disk")
    out[1].release = True
    out += step_samples(image, "the round red thing in the middle of the picture", [half], [0.5], [Click(70, 60, True)])
    return out


def _weights(folder) -> dict[str, torch.Tensor]:
    """The folder's tensors under their checkpoint (original) names."""
    out = {}
    for path in weight_files(folder):
        out.update(dict(iter_tensors(path)))
    return out


def _answer_ce(model, feature) -> tuple[torch.Tensor, int]:
    """(summed cross entropy over the answer tokens, their count) from the model's own unpadded forward."""
    ids = feature["input_ids"][None]
    logits = model(ids, torch.ones_like(ids), pixel_values=feature["pixel_values"]).logits[0, :-1]
    targets = feature["labels"][1:]
    keep = targets != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"), int(keep.sum())


def test_detects_a_qwen_vl_chat_base(base, tmp_path):
    assert is_qwen_vl_chat(base) and uses_native_path(base) and uses_native_path(base, "hf-vlm")
    assert not is_qwen_vl_chat(tmp_path) and not uses_native_path("Qwen/Qwen2-VL-2B-Instruct")
    assert uses_native_path(tmp_path, "qwen-vl-chat")


def test_encoding_is_the_policy_prompt_and_padding_leaves_the_loss_unchanged(base, samples):
    """Prompt ids and pixels = the policy's; labels only on the body + <|im_end|>; a right-padded batch has
    the loss of the unpadded rows' own forwards (positions = row index, so padding on the right is inert)."""
    model, tokenizer = load_qwen_vl_chat_native(base, device="cpu")
    policy = QwenVLChatPolicy(model, tokenizer)
    features = [encode_native_sample(tokenizer, s) for s in samples]
    for sample, f in zip(samples, features):
        prompt = tokenizer.encode(policy.prompt(sample.expression))
        n = len(prompt)
        assert f["input_ids"][:n].tolist() == prompt and (f["labels"][:n] == IGNORE_INDEX).all()
        observation = Observation(sample.image, sample.shown, sample.expression, release=sample.release)
        assert torch.equal(f["pixel_values"], policy.pixels([observation]))
        answer = f["input_ids"][n:].tolist()
        body = sample.target[len(answer_prefix(sample.expression)):]
        assert answer == tokenizer.encode(body) + [IM_END_ID] and f["labels"][n:].tolist() == answer
        assert tokenizer.decode(answer[:-1]) == body
    assert len({f["input_ids"].shape[0] for f in features}) > 1  # the batch really pads
    wrapper = NativeSFTModel(model)
    with torch.no_grad():
        single = wrapper(**collate(features[:1], EOD_ID))["loss"]
        ce, count = _answer_ce(model, features[0])
        torch.testing.assert_close(single, ce / count, atol=1e-5, rtol=1e-5)
        batch = collate(features, EOD_ID)
        assert (batch["input_ids"][:, -1] == EOD_ID).any() and batch["pixel_values"].shape[0] == len(features)
        padded = wrapper(**batch)["loss"]
        parts = [_answer_ce(model, f) for f in features]
        torch.testing.assert_close(padded, sum(c for c, _ in parts) / sum(n for _, n in parts), atol=1e-5, rtol=1e-5)


def test_save_writes_the_original_names_bit_exactly(base, tmp_path):
    """load -> save (sharded) gives the base's tensors under the base's names, bit for bit."""
    model, _ = load_qwen_vl_chat_native(base, device="cpu")
    out = save_qwen_vl_chat_native(model, tmp_path / "saved", base / "qwen.tiktoken", extra_files_from=base,
                                   max_shard_bytes=30 * 2**20)
    assert (out / "model.safetensors.index.json").is_file() and len(weight_files(out)) > 1
    before, after = _weights(base), _weights(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen" and config["torch_dtype"] == "float32" and config["fp32"]
    assert (out / "generation_config.json").read_text() == (base / "generation_config.json").read_text()


def test_exported_lora_model_gives_the_in_memory_logits(base, samples, tmp_path):
    """LoRA (non-zero adapters, unmerged) in memory == the merged export loaded by the production loader."""
    model, tokenizer = load_qwen_vl_chat_native(base, device="cpu")
    peft_model = prepare_native(model, FinetuneConfig(lora_dropout=0.0), checkpointing=False)
    generator = torch.Generator().manual_seed(0)
    adapters = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert adapters and all(p.requires_grad for p in adapters)
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for p in adapters:
            p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    f = encode_native_sample(tokenizer, samples[0])
    ids, pixels = f["input_ids"][None], f["pixel_values"]
    with torch.no_grad():
        trained = peft_model.get_base_model().model(ids, torch.ones_like(ids), pixel_values=pixels).logits
        untouched = load_qwen_vl_chat_native(base, device="cpu")[0](ids, pixel_values=pixels).logits
    folder = _export_native(peft_model, base, tmp_path)
    assert folder == tmp_path / "model" and not list(tmp_path.glob(".model.*"))
    assert {"config.json", "generation_config.json", "qwen.tiktoken", "model.safetensors"} <= {
        p.name for p in folder.iterdir()}
    assert _weights(folder).keys() == _weights(base).keys()  # no LoRA tensor left, nothing missing
    loaded, _ = load_qwen_vl_chat_native(folder, device="cpu")
    with torch.no_grad():
        exported = loaded(ids, torch.ones_like(ids), pixel_values=pixels).logits
    assert (trained - untouched).abs().max() > 1e-2  # the adapters matter
    torch.testing.assert_close(exported, trained, atol=1e-5, rtol=1e-5)


def _changed(base, folder) -> set[str]:
    before, after = _weights(base), _weights(folder)
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_lora_round_trip_through_the_policy(base, samples, tmp_path):
    """A few LoRA steps: only the LM's linear layers change (vision tower, resampler, embeddings, head, norms
    bit-identical); the folder loads through build_policy and proposes clicks."""
    config = FinetuneConfig(learning_rate=1e-2, max_steps=4, batch_size=3, lora_dropout=0.0, save_steps=1000)
    result = finetune(samples, base, tmp_path / "run", config, progress=False)
    assert result.steps == 4 and result.samples_seen == 12 and result.losses[-1] < result.losses[0]
    changed = _changed(base, result.model_dir)
    assert changed and all(k.startswith("transformer.h.") and any(s in k for s in LM_LINEARS) for k in changed)
    assert not any(k.endswith(".bias") for k in changed)  # LoRA adapts weights only
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["policy_kind"] == "qwen-vl-chat" and (tmp_path / "run" / "loss.png").is_file()
    policy = build_policy("qwen-vl-chat", str(result.model_dir), device="cpu")
    answers = policy.propose([Observation(s.image, s.shown, s.expression, release=s.release) for s in samples])
    assert all(row[0].click is not None and not row[0].malformed for row in answers)


def test_full_fine_tuning_memorises_one_sample(base, samples, tmp_path):
    """The overfit check: ~30 full steps on one sample and the constrained greedy policy writes its answer;
    the vision tower (resampler included) is bit-identical to the base."""
    sample = samples[0]
    config = FinetuneConfig(method="full", learning_rate=3e-3, max_steps=30, batch_size=1, lr_scheduler="constant",
                            save_steps=1000)
    observation = Observation(sample.image, sample.shown, sample.expression, release=sample.release)
    result = finetune([sample], base, tmp_path / "run", config, progress=False, policy_kind="qwen-vl-chat")
    # the base does not know the answer (what its random greedy answer is instead is not ours to assert)
    assert result.steps == 30 and result.losses[0] > 10 and result.losses[-1] < 0.05
    changed = _changed(base, result.model_dir)
    assert not any(k.startswith("transformer.visual.") for k in changed)
    assert {"transformer.wte.weight", "lm_head.weight", "transformer.ln_f.weight"} <= changed
    policy = build_policy("qwen-vl-chat", str(result.model_dir), device="cpu")
    assert policy.propose([observation])[0][0].text == sample.target
