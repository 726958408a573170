"""SegAgent's text protocol: the quoted outputs, round trips, conventions, stop answers; the overlay."""
from __future__ import annotations

import numpy as np
import pytest

from segagent_backend.agent.overlay import overlay_mask
from segagent_backend.agent.protocol import (
    QWEN_VL_CHAT_PROMPT, SEGAGENT_LLAVA, SEGAGENT_QWEN, CoordinateConvention, answer_prefix, format_answer,
    parse_answer, task_text,
)
from segagent_backend.agent.types import Click

CHICKEN = "the brown chicken in front of more chickens"


@pytest.mark.parametrize("text,width,height,click,estimate", [
    # row first on 0..999: row = round(A / 1000 * H), col = round(B / 1000 * W)
    (f"<ref>{CHICKEN}</ref> Current IOU: 0  Positive point: (760, 311)", 640, 480, Click(199, 365, True), 0.0),
    (f"<ref>{CHICKEN}</ref> Current IOU: 93  Negative point: (965, 23)", 640, 480, Click(15, 463, False), 0.93),
    ("<ref>fat legs</ref> Current IOU: 69  Negative point: (864, 906)", 500, 375, Click(453, 324, False), 0.69),
])
def test_the_protocol_docs_outputs(text, width, height, click, estimate):
    answer = parse_answer(text, width, height)
    assert answer.click == click and answer.iou_estimate == estimate and not answer.malformed


def test_box_prefix_variant():
    answer = parse_answer("<ref>person bottom left</ref><box>(68,308),(255,986)</box> Positive point: (679, 186)", 1000, 1000)
    assert answer.box == (68, 308, 255, 986) and answer.click == Click(186, 679, True)


@pytest.mark.parametrize("text,malformed", [
    ("<ref>x</ref> Current IOU: 97", False),  # an estimate and no action: a deliberate stop
    ("I cannot see it", True),
    ("<ref>x</ref> Current IOU: 50  Positive point: (abc, 3)", True),
    ("", True),
])
def test_non_actions_mean_stop(text, malformed):
    answer = parse_answer(text, 100, 100)
    assert answer.stop and answer.malformed == malformed


def test_out_of_range_numbers_are_clamped():
    answer = parse_answer("<ref>x</ref> Current IOU: 140  Positive point: (1500, -3)", 200, 100)
    assert answer.click == Click(0, 99, True) and answer.iou_estimate == 1.0


@pytest.mark.parametrize("convention", [SEGAGENT_QWEN, SEGAGENT_LLAVA, CoordinateConvention(row_first=False)])
@pytest.mark.parametrize("width,height", [(481, 321), (1920, 1080), (7, 5)])
def test_parse_format_round_trip(convention, width, height):
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = np.round(rng.uniform(0, convention.scale, 2), convention.decimals)  # numbers the model can write
        x, y = convention.decode(a, b, width, height)
        click = Click(x, y, bool(rng.integers(2)))
        estimate = int(rng.integers(101)) / 100
        text = format_answer("the cat", estimate, click, width, height, convention)
        answer = parse_answer(text, width, height, convention)
        assert (answer.click, answer.iou_estimate) == (click, estimate)
        assert format_answer("the cat", answer.iou_estimate, answer.click, width, height, convention) == text


def test_training_target_format():
    text = format_answer("fat legs", 0.69, Click(453, 324, False), 500, 375)
    assert text == "<ref>fat legs</ref> Current IOU: 69  Negative point: (864, 906)"
    assert text.startswith(answer_prefix("fat legs"))


def test_prompts():
    assert task_text("a dog").endswith("The object description is as follows:<ref>a dog</ref>")
    prompt = QWEN_VL_CHAT_PROMPT.format(image="/tmp/x.jpg", caption="a dog")
    assert "Picture 1: <img>/tmp/x.jpg</img>\nPlease optimize" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_overlay_is_green_alpha_half_on_mask_pixels_only():
    image = np.full((4, 5, 3), (100, 50, 200), np.uint8)
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    out = overlay_mask(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[mask] == (50, 152, 100)).all()  # 0.5 * (100, 50, 200) + 0.5 * (0, 255, 0), rounded half to even
    assert (out[~mask] == image[~mask]).all() and (image == (100, 50, 200)).all()
