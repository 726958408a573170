"""Supervised fine-tuning (trainer/finetune.py, trainer/sft_data.py) on tiny random VLMs.

The samples come from real trajectories: GrabCut + the click simulator on small synthetic images
(a disk and a differently coloured bar: GrabCut needs 2-4 clicks). Every model is built by
tests/tiny_vlms.py (once per session: tests/fixtures/models.py) and goes in and out through the production loader.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.conftest import make_disk_image  # noqa: E402
from segagent_backend.agent.loading import ModelLoadError  # noqa: E402
from segagent_backend.agent.loop import EpisodeRequest, run_episodes  # noqa: E402
from segagent_backend.agent.metrics import iou  # noqa: E402
from segagent_backend.agent.policies.base import Observation  # noqa: E402
from segagent_backend.agent.policies.hf_vlm import HFVLMPolicy, load_hf_vlm  # noqa: E402
from segagent_backend.agent.protocol import answer_prefix, format_answer, parse_answer  # noqa: E402
from segagent_backend.agent.segmenters import EmbeddingCache, build_segmenter  # noqa: E402
from segagent_backend.agent.types import Click  # noqa: E402
import trainer.finetune as finetune_module  # noqa: E402
from trainer.finetune import FinetuneConfig, finetune, language_model_linear_names  # noqa: E402
from trainer.samples import SFTSample, samples_from_trace  # noqa: E402
from trainer.sft_data import IGNORE_INDEX, collate, encode_sample, end_of_turn_id  # noqa: E402
from trainer.trajectories import record_trace  # noqa: E402

# (disk centre, radius, bar x0 y0 x1 y1, bar colour), caption: a distinct caption per image
OBJECTS = [(((44, 20), 10, (8, 14, 36, 26), (230, 220, 60)), "a red disk"),
           (((30, 30), 9, (24, 4, 36, 24), (40, 40, 200)), "fat legs"),
           (((20, 16), 10, (14, 24, 50, 40), (230, 220, 60)), "person bottom left")]
# full fine-tuning memorises these samples (one batch: all of them every step) in 150 steps, loss ~0.03;
# LoRA on this random 32-wide model cannot push the loss below ~5.9 (frozen head and norm: logits within
# about +-0.6), so its argmax memorisation would hang on tiny margins
OVERFIT = FinetuneConfig(method="full", learning_rate=3e-3, max_steps=150, batch_size=16, lr_scheduler="constant",
                         save_steps=1000)


def object_image(centre, radius, bar, colour, width=64, height=48):
    """(H, W, 3) uint8 image and (H, W) bool mask of a red disk joined to a bar of another colour."""
    image, gt = make_disk_image(width, height, centre, radius)
    x0, y0, x1, y1 = bar
    noise = np.random.default_rng(1).normal(0, 6, (y1 - y0, x1 - x0, 3))
    image[y0:y1, x0:x1] = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    gt = gt.copy()
    gt[y0:y1, x0:x1] = True
    return image, gt



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def data():
    """(segmenter, [(image, gt, caption)], SFT samples of their GrabCut trajectories, the traces)."""
    segmenter = build_segmenter("grabcut", EmbeddingCache(64 * 2**20))
    images, samples, traces = [], [], []
    for args, caption in OBJECTS:
        image, gt = object_image(*args)
        trace = record_trace(segmenter, image, gt, captions=[caption], image_name=caption)
        assert len(trace.steps) >= 2
        images.append((image, gt, caption))
        traces.append(trace)
        samples += samples_from_trace(trace, image, stop_sample=True)
    return segmenter, images, samples, traces


@pytest.fixture(scope="module")
def bases(tiny_qwen2_vl, tiny_llava):
    """The shared read-only tiny models: finetune writes only to its own output folder."""
    return {"qwen2_vl": tiny_qwen2_vl, "llava": tiny_llava}


class ForceTokens:
    """A logits processor that makes ``generate`` write ``ids`` (teacher forcing through generate)."""

    def __init__(self, ids, prompt_len):
        self.ids, self.prompt_len = ids, prompt_len

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[input_ids.shape[1] - self.prompt_len]] = 0
        return forced


@pytest.mark.parametrize("name", ["qwen2_vl", "llava"])
def test_encoding_is_what_the_policy_sees_and_batches_like_single_rows(bases, data, name):
    """Prompt ids/pixels = the policy's own processor call; loss only on answer + end of turn; a
    right-padded batch gives each row the logits incremental generation gives it."""
    from PIL import Image
    from transformers import LogitsProcessorList

    model, processor = load_hf_vlm(bases[name])
    policy = HFVLMPolicy(model, processor)
    eot = end_of_turn_id(processor, policy.stop_ids)
    assert eot in policy.stop_ids
    assert processor.tokenizer.convert_ids_to_tokens(eot) == {"qwen2_vl": "<|im_end|>", "llava": "</s>"}[name]
    rng = np.random.default_rng(0)
    samples = data[2][:2]
    mask = np.zeros((30, 40), bool)
    mask[5:12, 8:30] = True  # a third image of another size, so rows pad differently
    samples.append(SFTSample(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), mask, "fat legs",
                             format_answer("fat legs", 0.61, Click(39, 0, False), 40, 30)))
    features = [encode_sample(processor, s, eot) for s in samples]
    for sample, f in zip(samples, features):
        image = Image.fromarray(sample.overlay)
        inference = processor(text=[policy.prompt(sample.expression)], images=[image], return_tensors="pt")
        n = inference["input_ids"].shape[1]
        assert torch.equal(f["input_ids"][:n], inference["input_ids"][0])
        assert torch.equal(f["pixel_values"], inference["pixel_values"])
        assert (f["labels"][:n] == IGNORE_INDEX).all() and (f["labels"][n:] != IGNORE_INDEX).all()
        answer = f["input_ids"][n:].tolist()
        assert answer[-1] == eot and f["labels"][n:].tolist() == answer
        assert processor.tokenizer.decode(answer[:-1]) == sample.target[len(answer_prefix(sample.expression)):]
    batch = collate(features, processor.tokenizer.pad_token_id)
    lengths = [f["input_ids"].shape[0] for f in features]
    assert batch["input_ids"].shape == (3, max(lengths)) and len(set(lengths)) > 1
    assert batch["pixel_values"].shape[0] == sum(f["pixel_values"].shape[0] for f in features)
    with torch.no_grad():
        logits = model(**batch).logits
    for row, (sample, f) in enumerate(zip(samples, features)):
        image = Image.fromarray(sample.overlay)
        inputs = processor(text=[policy.prompt(sample.expression)], images=[image], return_tensors="pt")
        n = inputs["input_ids"].shape[1]
        answer = f["input_ids"][n:].tolist()
        out = model.generate(**inputs, max_new_tokens=len(answer), do_sample=False, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=None, pad_token_id=0,
                             logits_processor=LogitsProcessorList([ForceTokens(answer, n)]))
        assert out.sequences[0, n:].tolist() == answer
        generated = torch.cat(out.logits)  # raw logits of each generated position
        torch.testing.assert_close(logits[row, n - 1: n - 1 + len(answer)], generated, atol=1e-4, rtol=1e-4)


def test_overfit_reproduces_targets_and_beats_the_base(bases, data, tmp_path):
    """The issue's overfit test: trained on every sample of 3 trajectories (2-4 clicks and a final stop
    each: 11 samples), the policy writes exactly their answers, and its GrabCut episodes on the
    training images beat the untrained model's."""
    segmenter, images, samples, traces = data
    result = finetune(samples, bases["qwen2_vl"], tmp_path / "run", OVERFIT, progress=False)
    assert result.steps == 150 and result.samples_seen == 150 * len(samples)
    assert result.losses[-1] < 0.1 < 5 < result.losses[0]
    policy = HFVLMPolicy.from_pretrained(result.model_dir)
    answers = policy.propose([Observation(s.image, s.shown, s.expression) for s in samples])
    for sample, (answer,) in zip(samples, answers):
        height, width = sample.shown.shape
        expected = parse_answer(sample.target, width, height)
        assert answer.text == sample.target
        assert (answer.click, answer.iou_estimate) == (expected.click, expected.iou_estimate)

    def mean_iou(policy):
        results = run_episodes(policy, segmenter, [EpisodeRequest(image, caption) for image, _, caption in images])
        return float(np.mean([iou(r.mask, gt) for r, (_, gt, _) in zip(results, images)]))

    trained, untrained = mean_iou(policy), mean_iou(HFVLMPolicy.from_pretrained(bases["qwen2_vl"]))
    # at least as good as the trajectories' first clicks (0.34-0.49): the policy follows its training
    assert trained > untrained and trained >= np.mean([t.steps[0].iou for t in traces]) - 1e-6


def _weights(folder) -> dict:
    """The state dict of the model in ``folder`` as the production loader builds it."""
    return load_hf_vlm(folder)[0].state_dict()


def test_lora_changes_only_the_language_model(bases, data, tmp_path):
    """LoRA (the default) on the language model's linear layers: merged, the vision tower, the
    projector, embeddings and head are bit-identical to the base; the loss falls; the folder loads."""
    samples = data[2]
    config = FinetuneConfig(learning_rate=1e-2, max_steps=40, batch_size=8, lora_dropout=0.0, save_steps=1000)
    result = finetune(samples, bases["qwen2_vl"], tmp_path / "run", config, progress=False)
    assert result.steps == 40 and min(result.losses[-5:]) < result.losses[0] - 0.3
    before, after = _weights(bases["qwen2_vl"]), _weights(result.model_dir)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.language_model.") and k.endswith("proj.weight") for k in changed)
    assert any(".self_attn.q_proj" in k for k in changed) and any(".mlp.down_proj" in k for k in changed)
    config_json = json.loads((result.model_dir / "processor_config.json").read_text())
    assert config_json["processor_class"] == "Qwen2VLProcessor"
    model, processor = load_hf_vlm(result.model_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())
    policy = HFVLMPolicy(model, processor)
    policy.allow_stop = False  # 40 LoRA steps leave it near random, and a random model may stop: clicks only here
    answer = policy.propose([Observation(samples[0].image, samples[0].shown, "fat legs")])
    assert answer[0][0].click is not None


def test_resume_continues_the_global_step(bases, data, tmp_path, monkeypatch):
    """A run cut at step 3, rerun with the same ``out``, continues at step 4 up to the full count and
    ends where an uninterrupted run ends; outputs are written and readable; a crash while exporting
    leaves the previous model folder whole."""
    samples = data[2][:4]
    kw = dict(epochs=3, batch_size=2, learning_rate=5e-3, lr_scheduler="constant", lora_dropout=0.0, save_steps=2)
    first = finetune(samples, bases["qwen2_vl"], tmp_path / "cut", FinetuneConfig(max_steps=3, **kw), progress=False)
    assert first.steps == 3 and first.loss_steps == [1, 2, 3] and first.resumed_from is None
    second = finetune(samples, bases["qwen2_vl"], tmp_path / "cut", FinetuneConfig(**kw), progress=False)
    assert second.resumed_from.name == "checkpoint-3"
    assert second.steps == 6 and second.samples_seen == 6 and second.loss_steps == [1, 2, 3, 4, 5, 6]
    assert second.losses[:3] == first.losses
    whole = finetune(samples, bases["qwen2_vl"], tmp_path / "whole", FinetuneConfig(**kw), progress=False)
    assert whole.steps == 6 and whole.samples_seen == 12
    np.testing.assert_allclose(second.losses, whole.losses, rtol=1e-4)
    resumed = _weights(second.model_dir)
    for key, value in _weights(whole.model_dir).items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-5)
    checkpoints = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert checkpoints[-1] == "checkpoint-6" and len(checkpoints) <= 2
    # a resumption with other training settings is refused rather than mixed
    with pytest.raises(ValueError, match="different run"):
        finetune(samples, bases["qwen2_vl"], tmp_path / "cut", FinetuneConfig(**dict(kw, batch_size=4)), progress=False)
    log = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    assert log["steps"] == 6 and [e["step"] for e in log["losses"]] == [1, 2, 3, 4, 5, 6]
    assert log["config"]["method"] == "lora" and log["resumed_from"].endswith("checkpoint-3")
    plot = cv2.imread(str(tmp_path / "cut" / "loss.png"))
    assert plot is not None and plot.shape == (480, 800, 3) and (plot < 128).any()
    assert not list((tmp_path / "cut").glob(".model.*"))

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    saved = _weights(second.model_dir)
    monkeypatch.setattr(finetune_module, "save_processor", disk_full)
    with pytest.raises(OSError, match="disk full"):  # resumes at step 6: nothing to train, then the export fails
        finetune(samples, bases["qwen2_vl"], tmp_path / "cut", FinetuneConfig(**kw), progress=False)
    for key, value in _weights(tmp_path / "cut" / "model").items():
        assert torch.equal(saved[key], value)


def test_llava_trains_and_loads(bases, data, tmp_path):
    """LLaVA: LoRA targets only the Llama layers (CLIP has q_proj too), one batched step, loadable."""
    model, _ = load_hf_vlm(bases["llava"])
    targets = language_model_linear_names(model)
    assert targets and all(t.startswith("model.language_model.") for t in targets)
    assert any(n.endswith("q_proj") and "vision_tower" in n for n, _ in model.named_modules())
    # gradient checkpointing (CUDA's default) with LoRA: needs the embeddings' output to require grad
    config = FinetuneConfig(max_steps=1, batch_size=4, gradient_checkpointing=True)
    result = finetune(data[2][:4], bases["llava"], tmp_path / "run", config, progress=False)
    assert result.steps == 1 and result.samples_seen == 4 and np.isfinite(result.losses).all()
    before, after = _weights(bases["llava"]), _weights(result.model_dir)
    assert all(torch.equal(before[k], after[k]) for k in before if "language_model" not in k)
    policy = HFVLMPolicy.from_pretrained(result.model_dir)
    policy.allow_stop = False  # one step from a random model, which may as well stop: clicks only here
    sample = data[2][0]
    assert policy.propose([Observation(sample.image, sample.shown, sample.expression)])[0][0].click is not None


def test_full_fine_tuning_freezes_the_vision_encoder(bases, data, tmp_path):
    """Full: the language model, head and projector (Qwen's merger) train; the vision encoder does not.
    In bf16 (CUDA's default precision) + gradient checkpointing, here on the CPU."""
    config = FinetuneConfig(method="full", learning_rate=1e-2, max_steps=1, batch_size=2, precision="bf16",
                            gradient_checkpointing=True)
    result = finetune(data[2][:2], bases["qwen2_vl"], tmp_path / "run", config, progress=False)
    assert json.loads((tmp_path / "run" / "train_log.json").read_text())["precision"] == "bf16"
    before, after = _weights(bases["qwen2_vl"]), _weights(result.model_dir)  # saved in bf16, as trained
    changed = {k for k in before if not torch.equal(before[k].bfloat16(), after[k].bfloat16())}
    assert any(k.startswith("lm_head") for k in changed) and any(k.startswith("model.visual.merger") for k in changed)
    assert not any(k.startswith("model.visual.") and not k.startswith("model.visual.merger") for k in changed)


def test_bad_inputs(bases, data, tmp_path):
    samples = data[2][:1]
    with pytest.raises(ValueError, match="no SFT samples"):
        finetune([], bases["qwen2_vl"], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        FinetuneConfig(method="qlora")
    with pytest.raises(ValueError, match="batch_size"):
        FinetuneConfig(batch_size=0)
    with pytest.raises(ModelLoadError, match="does not exist"):
        finetune(samples, tmp_path / "nowhere", tmp_path / "b", progress=False)
    bad = SFTSample(samples[0].image, samples[0].shown, "fat legs", "Current IOU: 3  Positive point: (1, 2)")
    with pytest.raises(ValueError, match="does not start with the answer prefix"):
        finetune([bad], bases["qwen2_vl"], tmp_path / "c", progress=False)
    assert not (tmp_path / "c" / "model").exists()


def test_a_checkpoint_cut_short_is_not_resumed_from(tmp_path):
    """A process killed while the Trainer wrote checkpoint-N leaves it without trainer_state.json (written
    last): the run resumes from the newest complete one and the incomplete one is removed."""
    from trainer.finetune import last_complete_checkpoint

    checkpoints = tmp_path / "checkpoints"
    for step, complete in ((10, True), (20, True), (30, False)):
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        if complete:
            (folder / "trainer_state.json").write_text('{"global_step": %d}' % step)
    (checkpoints / "checkpoint-25").mkdir()
    (checkpoints / "checkpoint-25" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert last_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-20")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-10", "checkpoint-20"]
    assert last_complete_checkpoint(tmp_path / "none") is None
