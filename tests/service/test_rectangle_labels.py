"""RectangleLabels (smart): the box prompt, percent -> XYXY pixels."""
from __future__ import annotations

import pytest

from payloads import CONFIG, rectangle
from segagent_backend.agent.types import Box
from segagent_backend.errors import RequestError
from segagent_backend.labelstudio.config import parse_label_config
from segagent_backend.labelstudio.context import parse_context

CONFIG_LS = parse_label_config(CONFIG)


def test_box_to_pixels():
    prompt = parse_context({"result": [rectangle(10, 20, 30, 40, 200, 100)]}, CONFIG_LS)
    assert prompt.box.to_pixels(200, 100) == Box(20.0, 20.0, 80.0, 60.0)


def test_rotated_box_gives_its_bounding_box():
    region = rectangle(50, 50, 10, 10, 100, 100)
    region["value"]["rotation"] = 90  # about the top-left corner: the box swings to the left
    box = parse_context({"result": [region]}, CONFIG_LS).box.to_pixels(100, 100)
    assert box == Box(pytest.approx(40.0), pytest.approx(50.0), pytest.approx(50.0), pytest.approx(60.0))


def test_box_outside_the_image_is_refused():
    with pytest.raises(RequestError, match="value.width"):
        parse_context({"result": [rectangle(10, 20, 130, 40, 200, 100)]}, CONFIG_LS)
