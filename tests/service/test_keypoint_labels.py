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


@pytest.mark.parametrize("field,region_change,path", [
    ("value", {"value": "x"}, "params.context.result[1].value"),
    ("x", {"value": {"x": True, "y": 5}}, "params.context.result[1].value.x"),
    ("x", {"value": {"x": 10**400, "y": 5}}, "params.context.result[1].value.x"),
    ("labels", {"value": {"x": 5, "y": 5, "keypointlabels": "Banana"}}, "params.context.result[1].value.keypointlabels"),
    ("rotation", {"image_rotation": float("inf")}, "params.context.result[1].image_rotation"),
    ("size", {"original_width": 0.5}, "params.context.result[1].original_width"),
])
def test_errors_name_the_field_path(field, region_change, path):
    regions = [keypoint(10, 10, 100, 100, rid="a"), {**keypoint(10, 10, 100, 100, rid="b"), **region_change}]
    with pytest.raises(RequestError) as err:
        parse_context({"result": regions}, CONFIG_LS)
    assert path in err.value.message


def test_clicks_and_claimed_size_are_bounded():
    from segagent_backend.labelstudio.context import check_claimed_size

    many = [keypoint(10, 10, 100, 100, rid=str(i)) for i in range(5)]
    with pytest.raises(RequestError, match="SEGAGENT_MAX_CLICKS") as err:
        parse_context({"result": many}, CONFIG_LS, max_clicks=4)
    assert err.value.status == 413
    with pytest.raises(RequestError, match="SEGAGENT_MAX_IMAGE_PIXELS"):
        parse_context({"result": [keypoint(10, 10, 20000, 20000)]}, CONFIG_LS, max_pixels=50_000_000)
    prompt = parse_context({"result": [keypoint(10, 10, 1280, 960)]}, CONFIG_LS)
    check_claimed_size(prompt, 640, 480)  # the same picture at half the size
    check_claimed_size(prompt, 480, 640)  # or turned by EXIF orientation
    with pytest.raises(RequestError, match="do not match"):
        check_claimed_size(prompt, 640, 640)
