"""SAM 3 text as an episode's start (agent layer): the noun phrase, SAM 3's instances, the choice.

A tiny random ``Sam3Model`` with a CLIP tokenizer is loaded through the production loader
(``TextGrounder.from_pretrained``); what it finds is random, so the tests check the plumbing: the phrase
reaches the text encoder, the instances are what the model's outputs say, the start is one of them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from segagent_backend.agent.grounding import (MAX_CANDIDATES, TextGrounder, Ungroundable, choose_instance,
                                              noun_phrase, text_start)
from segagent_backend.agent.grounding.sam3_text import instances_from_outputs
from segagent_backend.agent.loading import ModelLoadError


@pytest.mark.parametrize("expression, phrase", [
    ("the man on the left in a red shirt", "man"),
    ("Red car", "red car"),
    ("the second giraffe from the right", "giraffe"),
    ("person who is wearing a hat", "person"),
    ("big white dog lying on the grass", "big white dog"),
    ("left of the bus", "bus"),
    ("the tall building", "tall building"),
    ("a very small brown and white dog", "small brown white dog"),  # the last four words: the noun stays
    ("", ""),
    ("the one on the left", ""),
])
def test_noun_phrase(expression, phrase):
    assert noun_phrase(expression) == phrase


def test_choice_by_the_policys_estimate_else_by_sam3s_score():
    assert choose_instance([0.9, 0.6, 0.7], [0.2, 0.8, None]) == 1  # the policy outranks SAM 3
    assert choose_instance([0.9, 0.6, 0.7], [None, None, None]) == 0  # no estimate: SAM 3's score
    assert choose_instance([0.6, 0.9], [0.5, 0.5]) == 1  # equal estimates: SAM 3's score breaks the tie
    with pytest.raises(ValueError):
        choose_instance([], [])


def test_instances_follow_the_outputs():
    """score = sigmoid(query) * sigmoid(presence), best first, above the threshold; empty masks dropped."""
    logits = torch.tensor([0.0, 3.0, -3.0, 2.0])
    presence = torch.tensor([4.0])
    masks = torch.full((4, 8, 8), -5.0)
    masks[0, :4], masks[1, 2:6, 2:6], masks[3, :, :2] = 5.0, 5.0, 5.0  # query 2: empty
    found = instances_from_outputs(logits, presence, masks, (16, 16), threshold=0.4)
    expected = torch.sigmoid(torch.tensor([3.0, 2.0, 0.0])) * torch.sigmoid(presence)
    assert [round(i.score, 6) for i in found] == [round(float(s), 6) for s in expected]
    assert [int(i.mask.sum()) for i in found] == [64, 64, 128]  # resized to 16 x 16
    assert found[0].mask[4:12, 4:12].all() and not found[0].mask[:4].any()
    masks[2] = 5.0
    assert len(instances_from_outputs(logits, presence, masks, (16, 16), threshold=0.0)) == 4
    assert instances_from_outputs(logits, presence, masks, (16, 16), threshold=0.99) == []


@pytest.fixture(scope="module")
def grounder(tiny_sam3_text):
    return TextGrounder.from_pretrained(tiny_sam3_text, "cpu")


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)


def test_the_phrase_reaches_the_text_encoder(grounder, image):
    seen = []
    hook = grounder.model.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    try:
        text_start(grounder, None, image, "the red car on the left", threshold=0.0)
    finally:
        hook.remove()
    assert len(seen) == 1 and seen[0].shape == (1, 32)
    assert grounder.tokenizer.decode(seen[0][0], skip_special_tokens=True) == "red car"


def test_the_start_is_one_of_sam3s_instances(grounder, image):
    instances = grounder.instances(image, "red car", threshold=0.0)
    assert 1 < len(instances) <= 8
    assert all(i.mask.shape == (60, 80) and i.mask.dtype == bool and i.mask.any() for i in instances)
    assert [i.score for i in instances] == sorted((i.score for i in instances), reverse=True)
    start = text_start(grounder, None, image, "the red car", threshold=0.0)
    assert start.phrase == "red car" and start.instances == min(len(instances), MAX_CANDIDATES)
    assert np.array_equal(start.mask, instances[0].mask) and start.score == instances[0].score  # no policy: score
    assert start.estimate is None


def test_nothing_found_is_ungroundable(grounder, image):
    with pytest.raises(Ungroundable, match="found no 'red car'"):
        text_start(grounder, None, image, "the red car", threshold=0.99)
    with pytest.raises(Ungroundable, match="no noun phrase"):
        text_start(grounder, None, image, "the one on the left", threshold=0.0)


def test_the_loader_wants_a_sam3_text_model(tiny_hf_sam, tmp_path):
    with pytest.raises(ModelLoadError, match="SEGAGENT_TEXT_MODEL=.*model_type 'sam'"):
        TextGrounder.from_pretrained(tiny_hf_sam, "cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        TextGrounder.from_pretrained(tmp_path, "cpu")


def test_the_image_and_video_checkpoint_loads_its_detector(tiny_sam3_text, grounder, image, tmp_path):
    """facebook/sam3 is one `sam3_video` checkpoint: config.detector_config, weights under detector_model.*"""
    import json

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "sam3-video"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((tiny_sam3_text / name).read_bytes())
    detector = json.loads((tiny_sam3_text / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({"model_type": "sam3_video", "detector_config": detector}))
    weights = load_file(tiny_sam3_text / "model.safetensors")
    save_file({f"detector_model.{k}": v for k, v in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    video = TextGrounder.from_pretrained(folder, "cpu")
    found, expected = video.instances(image, "cat", 0.0), grounder.instances(image, "cat", 0.0)
    assert [i.score for i in found] == [i.score for i in expected]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(found, expected))


def test_an_images_features_are_encoded_once(tiny_sam3_text, image):
    """Another phrase on the same image reuses the cached vision features and finds what a full forward pass
    (pixel values in, as Sam3Model documents it) finds."""
    from segagent_backend.agent.segmenters.cache import EmbeddingCache

    cache = EmbeddingCache(64 * 2**20)
    cached = TextGrounder.from_pretrained(tiny_sam3_text, "cpu", cache)
    encodes = []
    cached.model.vision_encoder.register_forward_hook(lambda *args: encodes.append(1))
    first = cached.instances(image, "red car", 0.0)
    again = cached.instances(image, "dog", 0.0)
    assert len(encodes) == 1 and cache.hits == 1 and len(cache) == 1
    cached.instances(image[::-1].copy(), "dog", 0.0)  # another image: encoded
    assert len(encodes) == 2 and len(cache) == 2

    model, tokenizer = cached.model, cached.tokenizer
    for phrase, found in (("red car", first), ("dog", again)):
        text = tokenizer(phrase, padding="max_length", max_length=32, return_tensors="pt")
        with torch.inference_mode():
            out = model(pixel_values=cached.preprocessor(image).pixel_values, **text)
        full = instances_from_outputs(out.pred_logits[0], out.presence_logits[0], out.pred_masks[0], (60, 80), 0.0)
        assert [i.score for i in found] == pytest.approx([i.score for i in full], abs=1e-5)
        assert all(np.array_equal(a.mask, b.mask) for a, b in zip(found, full))


def test_only_the_best_instances_are_resized(grounder, image):
    best = grounder.instances(image, "red car", 0.0, limit=3)
    assert [i.score for i in best] == [i.score for i in grounder.instances(image, "red car", 0.0)[:3]]
