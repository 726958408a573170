"""KeyPointLabels: annotator clicks in (percent -> pixels), the click trajectory out."""
from __future__ import annotations

import pytest

from payloads import CONFIG, keypoint
from segagent_backend.agent.types import Click
from segagent_backend.errors import RequestError
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG, parse_label_config
from segagent_backend.labelstudio.context import parse_context

CONFIG_LS = parse_label_config(CONFIG)


def test_percent_to_pixels_and_sign():
    regions = [keypoint(49.44, 59.97, 1080, 1080, rid="a"),
               keypoint(10.0, 20.0, 1080, 1080, positive=False, rid="b"),
               keypoint(0.0, 100.0, 1080, 1080, positive=None, rid="c")]
    prompt = parse_context({"result": regions}, CONFIG_LS)
    clicks = [c.to_pixels(1080, 1080) for c in prompt.clicks]
    assert clicks[0] == Click(pytest.approx(533.952), pytest.approx(647.676), True)
    assert clicks[1] == Click(108.0, 216.0, False)
    assert clicks[2] == Click(0.0, 1079.0, True)  # missing is_positive = positive; 100% clamps to the last pixel
    assert prompt.label == "Banana" and prompt.size == (1080, 1080)


def test_null_context_is_non_interactive():
    assert parse_context(None, CONFIG_LS) is None
    assert parse_context({}, CONFIG_LS) is None


@pytest.mark.parametrize("bad", [{"result": "x"}, {"result": [1]}, "ctx"])
def test_malformed_context(bad):
    with pytest.raises(RequestError):
        parse_context(bad, CONFIG_LS)


def test_trajectory_regions_in_click_order_with_sign_labels():
    config = parse_label_config(EXAMPLE_CONFIG)
    regions = config.trajectory.regions([Click(10, 20, True), Click(30, 40, False)], "image", 100, 200)
    assert [r["value"]["keypointlabels"] for r in regions] == [["positive"], ["negative"]]
    assert regions[0]["value"]["x"] == 10.0 and regions[0]["value"]["y"] == 10.0
    assert all(r["type"] == "keypointlabels" and r["from_name"] == "trajectory" for r in regions)
