"""BrushLabels results: Label Studio's brush RLE, checked with the SDK's own decoder."""
from __future__ import annotations

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from segagent_backend.labelstudio.config import EXAMPLE_CONFIG, parse_label_config


def test_region_round_trips_through_the_sdk_decoder():
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.6
    brush = parse_label_config(EXAMPLE_CONFIG).brush
    region = brush.region(mask, "Object", "image", 0.75, image_rotation=90)
    assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"], region["image_rotation"]) == (53, 37, 90)
    assert region["score"] == 0.75 and region["value"]["brushlabels"] == ["Object"]
    decoded = decode_rle(region["value"]["rle"]).reshape(37, 53, 4)[:, :, 3]
    assert np.array_equal(decoded > 127, mask) and set(np.unique(decoded)) <= {0, 255}


def test_label_choice():
    brush = parse_label_config(EXAMPLE_CONFIG).brush
    assert brush.label_for("Object") == "Object" and brush.label_for("Unknown") == "Object"
    assert brush.label_for(None) == "Object"


def test_regions_is_the_one_brush_region():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:20] = True
    (region,) = parse_label_config(EXAMPLE_CONFIG).brush.regions(mask, "Object", "image", 0.5)
    assert region["type"] == "brushlabels" and region["score"] == 0.5
