"""Hypothesis on every parser a caller's bytes reach: whatever arrives, the only exception is the documented
one (RequestError, ConfigError, AnnotationError) and nothing is allocated at a size the input only claims.

The examples per property are kept small (the whole file runs in well under 30 s on 2 cores).
"""
from __future__ import annotations

import json
import math
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from label_studio_sdk.converter.brush import mask2rle

from payloads import CONFIG
from segagent_backend.agent.protocol import SEGAGENT_LLAVA, SEGAGENT_QWEN, parse_answer
from segagent_backend.errors import RequestError
from segagent_backend.http_guard import MAX_JSON_DEPTH, json_depth, load_json
from segagent_backend.labelstudio.annotations import AnnotationError, corrections_from_tasks, corrections_from_webhook
from segagent_backend.labelstudio.brush import decode_brush
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG, parse_label_config
from segagent_backend.labelstudio.context import parse_context

FAST = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

LS_CONFIG = parse_label_config(CONFIG)
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)

# regions that look like Label Studio's, with any field replaced by anything
REGION_KEYS = ["type", "value", "id", "original_width", "original_height", "image_rotation", "is_positive"]
VALUE_KEYS = ["x", "y", "width", "height", "rotation", "keypointlabels", "rectanglelabels", "labels"]
values = st.fixed_dictionaries({}, optional={k: scalars | st.lists(st.text(max_size=6), max_size=2)
                                             | st.floats(0, 100) for k in VALUE_KEYS})
regions = st.fixed_dictionaries(
    {"type": st.sampled_from(["keypointlabels", "rectanglelabels", "KeyPointLabels", "polygonlabels"]) | scalars},
    optional={"value": values | json_values, "id": scalars, "original_width": st.integers(-5, 10**12) | scalars,
              "original_height": st.integers(-5, 10**12) | scalars, "image_rotation": scalars,
              "is_positive": scalars})


@FAST
@given(context=st.fixed_dictionaries({"result": st.lists(regions, max_size=5) | json_values}) | json_values)
def test_context_raises_only_request_errors(context):
    try:
        prompt = parse_context(context, LS_CONFIG, max_clicks=3, max_pixels=50_000_000)
    except RequestError as exc:
        assert exc.status in (400, 413) and len(exc.message) < 600
        return
    if prompt is not None:
        assert len(prompt.clicks) <= 3
        for click in prompt.clicks:
            assert 0 <= click.x <= 100 and 0 <= click.y <= 100
        if prompt.box is not None:
            assert math.isfinite(prompt.box.rotation)
            box = prompt.box.to_pixels(640, 480)
            assert all(math.isfinite(v) for v in (box.x1, box.y1, box.x2, box.y2))
        if prompt.size is not None:
            assert prompt.size[0] * prompt.size[1] <= 50_000_000


TAGS = ["View", "Image", "BrushLabels", "KeyPointLabels", "RectangleLabels", "Label", "Text", "Header", "Choices"]
ATTRS = st.dictionaries(st.sampled_from(["name", "value", "toName", "smart", "smartOnly"]),
                        st.sampled_from(["image", "$image", "mask", "true", "", "$", "<", "&amp;", "a\"b"]),
                        max_size=3)


@st.composite
def xml_configs(draw, depth=0):
    tag = draw(st.sampled_from(TAGS))
    attrs = "".join(f' {k}="{v}"' for k, v in draw(ATTRS).items())
    children = draw(st.lists(xml_configs(depth + 1), max_size=3)) if depth < 3 else []
    return f"<{tag}{attrs}>{''.join(children)}</{tag}>" if children else f"<{tag}{attrs}/>"


@SLOW
@given(xml=xml_configs() | st.text(max_size=200) | st.just(EXAMPLE_CONFIG))
def test_label_configs_raise_only_config_errors(xml):
    try:
        config = parse_label_config(xml, max_chars=10_000)
    except RequestError as exc:  # ConfigError is one
        assert exc.status in (400, 413) and "Traceback" not in exc.message
        return
    assert config.image_name and config.brush is not None


@FAST
@given(text=st.text(max_size=300) | st.builds(
    lambda kind, a, b, iou: f"Current IOU: {iou}. {kind} point: ({a}, {b})",
    st.sampled_from(["Positive", "Negative", "No"]), st.integers(-10**6, 10**30) | st.floats(allow_nan=False),
    st.integers(-10**6, 10**6), st.integers(-1000, 1000)),
    width=st.integers(1, 4096), height=st.integers(1, 4096), strict=st.booleans(),
    convention=st.sampled_from([SEGAGENT_QWEN, SEGAGENT_LLAVA]))
def test_policy_answers_never_raise(text, width, height, strict, convention):
    answer = parse_answer(text, width, height, convention, strict=strict)
    if answer.click is not None:
        assert math.isfinite(answer.click.x) and math.isfinite(answer.click.y)
    if answer.iou_estimate is not None:
        assert 0.0 <= answer.iou_estimate <= 1.0


@settings(max_examples=60, deadline=None, database=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       density=st.floats(0.0, 1.0))
def test_rle_round_trips_through_the_sdk_codec(height, width, seed, density):
    mask = np.random.default_rng(seed).random((height, width)) < density
    rle = mask2rle(mask.astype(np.uint8) * 255)
    assert np.array_equal(decode_brush(rle, mask.shape[1], mask.shape[0]), mask)


@FAST
@given(rle=st.lists(st.integers(0, 255), min_size=0, max_size=64) | json_values,
       header=st.integers(0, 2**32 - 1) | st.none(), width=st.integers(1, 64), height=st.integers(1, 64))
def test_garbage_rle_raises_only_annotation_errors_and_allocates_nothing_claimed(rle, header, width, height):
    if header is not None and isinstance(rle, list):
        rle = list(header.to_bytes(4, "big")) + rle
    tracemalloc.start()
    started = time.perf_counter()
    try:
        mask = decode_brush(rle, width, height)
    except AnnotationError:
        mask = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 2_000_000 and time.perf_counter() - started < 1.0  # never the 4 GB a header may claim
    if mask is not None:
        assert mask.shape == (height, width)


def webhook_bodies():
    annotation = st.fixed_dictionaries({}, optional={
        "id": scalars, "task": scalars, "result": st.lists(st.fixed_dictionaries(
            {"type": st.just("brushlabels") | scalars},
            optional={"value": st.fixed_dictionaries({}, optional={"rle": st.lists(st.integers(0, 255), max_size=12)
                                                                   | json_values, "brushlabels": json_values})
                      | json_values, "original_width": scalars | st.integers(1, 64),
                      "original_height": scalars | st.integers(1, 64)}), max_size=3) | json_values,
        "was_cancelled": scalars, "parent_prediction": scalars})
    task = st.fixed_dictionaries({}, optional={"id": scalars | st.integers(1, 5), "data": json_values
                                               | st.fixed_dictionaries({"image": st.text(max_size=10)}),
                                               "predictions": json_values})
    project = st.fixed_dictionaries({}, optional={"id": scalars, "label_config": st.just(EXAMPLE_CONFIG) | scalars})
    return st.fixed_dictionaries(
        {"action": st.sampled_from(["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED"])},
        optional={"annotation": annotation | st.lists(annotation, max_size=3) | json_values,
                  "task": task | st.lists(task, max_size=3) | json_values, "project": project | json_values})


@FAST
@given(body=webhook_bodies())
def test_webhook_annotations_raise_nothing_and_keep_only_real_ids(body):
    good, bad = corrections_from_webhook(body)
    for c in good:
        assert type(c.task_id) is int and c.task_id > 0
        assert c.annotation_id is None or (type(c.annotation_id) is int and c.annotation_id > 0)
        assert c.project is None or (type(c.project) is int and c.project > 0)
    for r in bad:
        for value in (r.task_id, r.annotation_id):
            assert value is None or (type(value) is int and value > 0)
    json.dumps([r.reason for r in bad])


@SLOW
@given(tasks=st.lists(json_values | st.fixed_dictionaries({"id": scalars, "annotations": json_values}), max_size=4))
def test_exported_tasks_raise_nothing(tasks):
    corrections_from_tasks(tasks, EXAMPLE_CONFIG, project=1)


@pytest.fixture(scope="module")
def webhook_settings(tmp_path_factory):
    from segagent_backend.settings import Settings

    return Settings.from_env({"MODEL_DIR": str(tmp_path_factory.mktemp("models")), "SEGAGENT_PRELOAD": "false"})


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=webhook_bodies() | st.fixed_dictionaries(
    {"action": st.sampled_from(["ANNOTATIONS_DELETED", "TASKS_DELETED", "START_TRAINING", "TASKS_CREATED"])},
    optional={"annotations": json_values, "tasks": json_values, "project": json_values}))
def test_handle_webhook_raises_only_request_errors(webhook_settings, body):
    from segagent_backend.webhook import handle_webhook

    try:
        reply = handle_webhook(body, webhook_settings)
    except RequestError as exc:
        assert exc.status == 400
        return
    json.dumps(reply)
    root = webhook_settings.model_dir / "corrections"
    for path in root.rglob("*") if root.exists() else []:
        assert path.name.isprintable() and len(path.name) < 40


@FAST
@given(value=json_values)
def test_json_depth_is_the_nesting_depth(value):
    try:
        text = json.dumps(value).encode()
    except ValueError:
        return
    assert json_depth(text) == _depth(value) or (_depth(value) <= MAX_JSON_DEPTH and json_depth(text) <= MAX_JSON_DEPTH)


@FAST
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n).encode()))
def test_body_loader_raises_only_request_errors(raw):
    try:
        load_json(raw)
    except RequestError:
        pass


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
