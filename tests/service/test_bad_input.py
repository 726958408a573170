"""Every caller mistake gets a JSON error (never HTML, never a 500) and the service keeps serving."""
from __future__ import annotations

import pytest

from payloads import CONFIG, keypoint, predict_body


def assert_json_error(reply, status: int, *words: str) -> None:
    assert reply.status_code == status, (reply.status_code, reply.data[:300])
    assert reply.is_json, reply.data[:200]
    message = reply.json["error"]
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook"])
def test_malformed_json(client, route):
    assert_json_error(client.post(route, data="{not json", content_type="application/json"), 400, "JSON")


@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook"])
def test_body_that_is_not_an_object(client, route):
    assert_json_error(client.post(route, json=[1, 2]), 400, "object")


def test_missing_tasks(client):
    assert_json_error(client.post("/predict", json={"label_config": CONFIG}), 400, "tasks")


def test_task_without_the_image_field(client):
    body = predict_body("unused", [keypoint(50, 50, 160, 120)])
    body["tasks"][0]["data"] = {"picture": "x.png"}
    assert_json_error(client.post("/predict", json=body), 400, "data.image")


def test_unknown_region_type_in_context(client, media_server):
    region = keypoint(50, 50, 160, 120)
    region["type"] = "polygonlabels"
    assert_json_error(client.post("/predict", json=predict_body(f"{media_server}/disk.png", [region])), 400,
                      "polygonlabels")


@pytest.mark.parametrize("x,y", [(101.0, 50.0), (-0.5, 50.0), (50.0, 1e9), ("abc", 3)])
def test_percent_out_of_range(client, media_server, x, y):
    body = predict_body(f"{media_server}/disk.png", [keypoint(x, y, 160, 120)])
    assert_json_error(client.post("/predict", json=body), 400, "value.")


def test_image_that_does_not_load(client, media_server):
    body = predict_body(f"{media_server}/not-an-image.png", [keypoint(50, 50, 160, 120)])
    assert_json_error(client.post("/predict", json=body), 422, "not a readable image")


def test_image_that_is_not_there(client, media_server):
    body = predict_body(f"{media_server}/missing.png", [keypoint(50, 50, 160, 120)])
    assert_json_error(client.post("/predict", json=body), 502, "could not be fetched")  # not what the host said


def test_unreachable_media_host(client):
    body = predict_body("http://127.0.0.1:9/x.png", [keypoint(50, 50, 160, 120)])
    assert_json_error(client.post("/predict", json=body), 502, "could not be fetched")


def test_upload_url_without_label_studio_url(client):
    body = predict_body("/data/upload/3/x.png", [keypoint(50, 50, 160, 120)])
    assert_json_error(client.post("/predict", json=body), 422, "LABEL_STUDIO_URL")


@pytest.mark.parametrize("route", ["/predict", "/setup"])
def test_label_config_without_image(client, route):
    config = '<View><Text name="t" value="$t"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>'
    body = {"schema": config, "project": "1"} if route == "/setup" else dict(predict_body("x", None), label_config=config)
    reply = client.post(route, json=body)
    assert_json_error(reply, 400, "no <Image>", "<BrushLabels")  # says what is missing AND shows a working config


def test_label_config_without_brush(client):
    config = '<View><Image name="image" value="$image"/></View>'
    assert_json_error(client.post("/setup", json={"schema": config}), 400, "<BrushLabels>")


def test_label_config_not_xml(client):
    assert_json_error(client.post("/setup", json={"schema": "<View><Image"}), 400, "not valid XML")


def test_unknown_route_and_method_are_json(client):
    assert_json_error(client.get("/nope"), 404, "")
    assert_json_error(client.get("/predict"), 405, "")


def test_one_bad_task_in_a_batch_does_not_spoil_the_others(client, media_server):
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)])
    body["tasks"].append({"id": 8, "data": {"image": f"{media_server}/not-an-image.png"}})
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200
    good, bad = reply.json["results"]
    assert good["result"] and "result" not in bad and "not a readable image" in bad["error"]


def test_service_keeps_serving_after_errors(client, media_server):
    for _ in range(3):
        client.post("/predict", data="garbage", content_type="application/json")
        client.post("/predict", json=predict_body(f"{media_server}/not-an-image.png", [keypoint(50, 50, 160, 120)]))
    assert client.get("/health").json["status"] == "UP"
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)]))
    assert reply.status_code == 200 and reply.json["results"][0]["result"]


# ----- issue 12: cost bounded by size, every caller mistake a JSON 4xx naming the field --------------------

LEAKS = ("Traceback", "/work", "/tmp", "Error:", "TypeError", "ValueError", "KeyError", "AttributeError",
         "OverflowError", "RecursionError", "IndexError", "Exception")


def assert_clean(reply) -> None:
    """No stack, no absolute path, no exception class name in a reply."""
    text = reply.get_data(as_text=True)
    for leak in LEAKS:
        assert leak not in text, (leak, text[:300])


def brush_event(annotation_id, rle, width=640, height=480, task_id=2) -> dict:
    from segagent_backend.labelstudio.config import EXAMPLE_CONFIG

    region = {"id": "r1", "type": "brushlabels", "from_name": "mask", "to_name": "image",
              "original_width": width, "original_height": height,
              "value": {"format": "rle", "rle": rle, "brushlabels": ["Object"]}}
    return {"action": "ANNOTATION_CREATED", "project": {"id": 7, "label_config": EXAMPLE_CONFIG},
            "annotation": {"id": annotation_id, "task": task_id, "result": [region]},
            "task": {"id": task_id, "data": {"image": "http://127.0.0.1:9/x.png"}}}


def test_rle_header_claiming_2_pow_32_values_is_refused_before_decoding(client):
    import time

    rle = [255, 255, 255, 255] + [0] * 60  # the header claims 2^32 - 1 values
    started = time.perf_counter()
    reply = client.post("/webhook", json=brush_event(1, rle))
    assert time.perf_counter() - started < 1.0
    # a bad annotation is not a bad request (a bulk event keeps its good ones): acknowledged, rejected, why
    assert reply.status_code == 200 and reply.json["recorded"] == []
    assert "header claims 4294967295 values" in reply.json["rejected"][0]["reason"]
    assert_clean(reply)


def test_huge_claimed_original_size_is_refused_before_any_allocation(client, media_server):
    import time

    started = time.perf_counter()
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 20000, 20000)])
    reply = client.post("/predict", json=body)
    assert time.perf_counter() - started < 1.0
    assert_json_error(reply, 413, "params.context.result[0].original_width", "SEGAGENT_MAX_IMAGE_PIXELS")


def test_claimed_original_size_must_match_the_image(client, media_server):
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 4000, 4000)])  # disk.png is 160x120
    assert_json_error(client.post("/predict", json=body), 422, "original_width", "160x120")
    body = predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 320, 240)])  # same picture, twice the size
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200 and reply.json["results"][0]["result"][0]["original_width"] == 320


@pytest.mark.parametrize("route,key", [("/setup", "schema"), ("/predict", "label_config")])
def test_six_megabyte_label_config_is_413_naming_the_setting(client, route, key):
    import time

    config = CONFIG.replace("</View>", "<!--" + "x" * 6_000_000 + "--></View>")
    body = {"schema": config} if route == "/setup" else dict(predict_body("x.png", None), label_config=config)
    started = time.perf_counter()
    reply = client.post(route, json=body)
    assert time.perf_counter() - started < 1.5
    assert_json_error(reply, 413, key, "SEGAGENT_MAX_LABEL_CONFIG_KB")


def test_label_config_parse_cache_is_bounded_in_bytes(client):
    from segagent_backend.labelstudio import config as config_module

    for i in range(6):  # 6 distinct ~400 KB configs: the cache keeps what its budget holds
        big = CONFIG.replace("</View>", f"<!--{i}" + "y" * 400_000 + "--></View>")
        reply = client.post("/setup", json={"schema": big})
        assert reply.status_code == 200, reply.json
    assert config_module.cache_chars() <= config_module.CACHE_BUDGET_CHARS


def test_fifty_megabyte_body_is_413_naming_the_setting(client):
    reply = client.post("/predict", data=b" " * (50 * 1024 * 1024), content_type="application/json")
    assert_json_error(reply, 413, "SEGAGENT_MAX_BODY_MB")


def test_too_many_tasks_and_clicks_name_the_setting(make_client, media_server):
    client = make_client(SEGAGENT_MAX_TASKS=2, SEGAGENT_MAX_CLICKS=3)
    body = predict_body(f"{media_server}/disk.png", None)
    body["tasks"] *= 3
    assert_json_error(client.post("/predict", json=body), 413, "tasks", "SEGAGENT_MAX_TASKS")
    clicks = [keypoint(10 + i, 50, 160, 120, rid=f"k{i}") for i in range(4)]
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", clicks))
    assert_json_error(reply, 413, "params.context.result", "SEGAGENT_MAX_CLICKS")


@pytest.mark.parametrize("bad_id", ["../../etc/x", "a\x00b", "x" * 300, {"a": 1}, -3, True, 2**70, 1.5])
def test_annotation_ids_that_are_not_ids_never_reach_a_file_name(client, make_settings, bad_id):
    from label_studio_sdk.converter.brush import mask2rle
    import numpy as np

    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:40] = True
    reply = client.post("/webhook", json=brush_event(bad_id, mask2rle(mask.astype(np.uint8) * 255), 64, 48))
    assert_json_error(reply, 400, "annotation.id")
    assert_clean(reply)
    root = make_settings().model_dir / "corrections"
    names = [p.name for p in root.rglob("*")] if root.exists() else []
    assert all(n.isprintable() and len(n) < 40 and ".." not in n for n in names), names


@pytest.mark.parametrize("value", ["x=50", [50, 50], 7])
def test_region_value_of_the_wrong_type(client, value):
    region = keypoint(50, 50, 160, 120)
    region["value"] = value
    reply = client.post("/predict", json=predict_body("x.png", [region]))
    assert_json_error(reply, 400, "params.context.result[0].value")
    assert_clean(reply)


@pytest.mark.parametrize("labels", ["Banana", 3, {"a": "b"}, [1, 2]])
def test_labels_that_are_not_a_list_of_strings(client, labels):
    region = keypoint(50, 50, 160, 120)
    region["value"]["keypointlabels"] = labels
    reply = client.post("/predict", json=predict_body("x.png", [region]))
    assert_json_error(reply, 400, "params.context.result[0].value.keypointlabels")
    assert_clean(reply)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_rotation_nan_or_inf_is_a_400(client, literal):
    from payloads import rectangle
    import json

    text = json.dumps(predict_body("x.png", [rectangle(10, 10, 20, 20, 160, 120)])).replace(
        '"rotation": 0', f'"rotation": {literal}')
    reply = client.post("/predict", data=text, content_type="application/json")
    assert_json_error(reply, 400, "finite")
    assert_clean(reply)


def test_rotation_nan_in_the_parser_names_the_field():
    from payloads import rectangle
    from segagent_backend.errors import RequestError
    from segagent_backend.labelstudio.config import parse_label_config
    from segagent_backend.labelstudio.context import parse_context

    region = rectangle(10, 10, 20, 20, 160, 120)
    for bad in (float("nan"), float("inf"), "90", [1]):
        region["value"]["rotation"] = bad
        with pytest.raises(RequestError, match=r"params\.context\.result\[0\]\.value\.rotation"):
            parse_context({"result": [region]}, parse_label_config(CONFIG))


@pytest.mark.parametrize("where,huge", [("x", 10**400), ("original_width", 10**30), ("task_id", 10**30),
                                        ("image_rotation", 10**400)])
def test_huge_integers_are_a_400(client, where, huge):
    body = predict_body("x.png", [keypoint(50, 50, 160, 120)])
    region = body["params"]["context"]["result"][0]
    if where == "x":
        region["value"]["x"] = huge
    elif where == "task_id":
        body["tasks"][0]["id"] = huge
    else:
        region[where] = huge
    reply = client.post("/predict", json=body)
    assert reply.status_code in (400, 413), reply.data[:300]
    assert reply.is_json and reply.json["error"]
    assert_clean(reply)


def test_integer_of_5000_digits_is_a_400(client):
    reply = client.post("/predict", data='{"tasks": [{"id": ' + "9" * 5000 + ', "data": {}}]}',
                        content_type="application/json")
    assert_json_error(reply, 400, "not valid JSON")


@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook"])
def test_thousand_deep_json_is_a_400(client, route):
    deep = '{"tasks": ' + "[" * 1000 + "]" * 1000 + "}"
    reply = client.post(route, data=deep, content_type="application/json")
    assert_json_error(reply, 400, "deep")
    assert_clean(reply)


def test_brackets_inside_strings_do_not_count_as_depth(client):
    body = {"action": "SOMETHING_ELSE", "note": "[" * 5000 + '\\"{' * 100}
    reply = client.post("/webhook", json=body)
    assert reply.status_code == 200


@pytest.mark.parametrize("body", [
    {"tasks": "x"}, {"tasks": [1]}, {"tasks": [{"id": "7", "data": {}}]}, {"tasks": [{"data": []}]},
    {"tasks": [{"data": {}}], "params": []}, {"tasks": [{"data": {}}], "params": {"context": 3}},
    {"tasks": [{"data": {}}], "params": {"context": {"result": {"a": 1}}}},
    {"tasks": [{"data": {}}], "params": {"context": {"result": [5]}}},
    {"tasks": [{"data": {}}], "label_config": 5}, {"tasks": [{"data": {}}], "project": {"id": 1}},
])
def test_wrong_types_in_predict_are_400_naming_the_field(client, body):
    reply = client.post("/predict", json=body)
    assert reply.status_code == 400, reply.data[:300]
    assert reply.json["field"] and reply.json["field"] in reply.json["error"]
    assert_clean(reply)


@pytest.mark.parametrize("body", [
    {"action": 5}, {"action": "ANNOTATION_CREATED", "annotation": "x"},
    {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": 5}},
    {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": [{"type": "brushlabels", "value": "x"}]},
     "task": {"id": 2}},
    {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "a/b"}]}, {"action": "x" * 300},
    {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": 5}},
])
def test_wrong_types_in_webhook_are_4xx_or_rejections(client, body):
    reply = client.post("/webhook", json=body)
    assert reply.status_code in (200, 400), reply.data[:300]
    assert reply.is_json and (reply.status_code == 200 or reply.json["error"])
    assert_clean(reply)


@pytest.mark.parametrize("body", [{"schema": 5}, {"schema": "<View/>", "project": {"a": 1}},
                                  {"schema": "<View/>", "hostname": 3}, {"schema": ["<View/>"]}])
def test_wrong_types_in_setup_are_400(client, body):
    reply = client.post("/setup", json=body)
    assert reply.status_code == 400 and reply.json["field"]
    assert_clean(reply)


def test_label_config_with_a_doctype_is_refused(client):
    config = '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + CONFIG
    assert_json_error(client.post("/setup", json={"schema": config}), 400, "DOCTYPE")


def test_parser_errors_carry_the_field_too(client):
    reply = client.post("/predict", json=predict_body("x.png", [keypoint(50, 101, 160, 120)]))
    assert_json_error(reply, 400, "params.context.result[0].value.y")
    assert reply.json["field"] == "params.context.result[0].value.y"
    reply = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 3}, {}]})
    assert_json_error(reply, 400, "annotations[1].id")
    assert reply.json["field"] == "annotations[1].id"
