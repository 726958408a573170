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
    assert_json_error(client.post("/predict", json=body), 502, "HTTP 404")


def test_unreachable_media_host(client):
    body = predict_body("http://127.0.0.1:9/x.png", [keypoint(50, 50, 160, 120)])
    assert_json_error(client.post("/predict", json=body), 502, "unreachable")


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
