"""GET /, /health, /versions, /metrics; POST /webhook for every action Label Studio emits; Basic auth."""
from __future__ import annotations

import base64
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from payloads import keypoint, predict_body
from segagent_backend.webhook import KNOWN_ACTIONS


@pytest.mark.parametrize("route", ["/", "/health"])
def test_health(client, route):
    reply = client.get(route)
    assert reply.status_code == 200
    assert reply.json["status"] == "UP" and reply.json["model_class"] == "SegAgent"
    assert reply.json["model_version"].startswith("segagent-grabcut")


def test_health_reports_model_load_failure(make_settings, tmp_path):
    from segagent_backend.app import create_app
    from segagent_backend.errors import ModelUnavailable
    from segagent_backend.model_host import ModelHost

    def broken(settings, cache):
        raise RuntimeError("broken weights")

    settings = make_settings()
    host = ModelHost(settings, build_segmenter=broken)
    with pytest.raises(ModelUnavailable):
        host.load()  # a background load leaves the same
    reply = create_app(settings, host).test_client().get("/health")
    assert reply.status_code == 503 and reply.json["status"] == "ERROR" and "broken weights" in reply.json["model"]


def test_versions(client):
    assert client.get("/versions").json["versions"][0].startswith("segagent-")


WEBHOOK_BODIES = {
    "ANNOTATION_CREATED": {"annotation": {"id": 1, "result": []}, "task": {"id": 2, "data": {}}, "project": {"id": 3}},
    "ANNOTATIONS_DELETED": {"annotations": [{"id": 1}], "project": {"id": 3}},
    "TASKS_DELETED": {"tasks": [{"id": 2}], "project": {"id": 3}},
    "START_TRAINING": {"project": {"id": 3, "label_config": "<View/>"}},  # no annotation, no task
}


@pytest.mark.parametrize("action", sorted(KNOWN_ACTIONS))
def test_webhook_answers_every_action_well_under_a_second(client, action):
    body = {"action": action, **WEBHOOK_BODIES.get(action, {"project": {"id": 3}})}
    started = time.perf_counter()
    reply = client.post("/webhook", json=body)
    assert time.perf_counter() - started < 0.5
    assert reply.status_code == 200 and reply.json["action"] == action and reply.json["known"]


def test_webhook_unknown_action_gets_a_note(client):
    reply = client.post("/webhook", json={"action": "SOMETHING_NEW"})
    assert reply.status_code == 200 and not reply.json["known"] and "unknown action" in reply.json["note"]


def test_webhook_without_action_is_a_json_error(client):
    reply = client.post("/webhook", json={"project": {"id": 1}})
    assert reply.status_code == 400 and "action" in reply.json["error"]


def metric_samples(client) -> dict:
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.data.decode()) for s in family.samples}


def test_metrics_count_requests_latency_predictions_and_cache(client, media_server):
    client.get("/health")
    client.post("/predict", json=predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)]))
    client.post("/predict", data="bad", content_type="application/json")
    samples = metric_samples(client)
    key = ("segagent_http_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "200")))
    assert samples[key] == 1.0
    assert samples[("segagent_http_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "400")))] == 1.0
    assert samples[("segagent_http_request_seconds_count", (("route", "/predict"),))] == 2.0
    assert samples[("segagent_predictions_total", (("outcome", "ok"),))] == 1.0
    assert samples[("segagent_embedding_cache_entries", ())] == 1.0
    assert samples[("segagent_embedding_cache_bytes", ())] > 0
    assert samples[("segagent_model_ready", ())] == 1.0


def auth_header(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("route,method", [("/", "get"), ("/health", "get"), ("/metrics", "get"), ("/versions", "get"),
                                          ("/openapi.json", "get"), ("/setup", "post"), ("/predict", "post"), ("/webhook", "post")])
def test_basic_auth_guards_every_route(make_client, route, method):
    client = make_client(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret")
    for headers in ({}, auth_header("ls", "wrong"), auth_header("other", "s3cret")):
        reply = getattr(client, method)(route, headers=headers, json={})
        assert reply.status_code == 401 and reply.is_json and "WWW-Authenticate" in reply.headers
    reply = getattr(client, method)(route, headers=auth_header("ls", "s3cret"), json={"action": "PROJECT_UPDATED"})
    assert reply.status_code != 401


def test_redis_status_on_health(make_client, redis_url):
    assert make_client(REDIS_URL=redis_url).get("/health").json["redis"] == "ok"
    # with REDIS_URL the jobs go through Redis: without it nothing can be predicted, so say so
    down = make_client(REDIS_URL="redis://127.0.0.1:9/0").get("/health")
    assert down.status_code == 503 and down.json["redis"].startswith("unreachable") and down.json["status"] == "ERROR"


def test_metrics_labels_are_bounded(client):
    for method in ("PURGE", "BREW", "PROPFIND", "X" * 200, "DELETE", "HEAD", "OPTIONS"):
        client.open("/predict", method=method)
        client.open(f"/nope/{method}", method=method)
    samples = metric_samples(client)
    labels = {dict(k[1]).get("method") for k in samples if k[0] == "segagent_http_requests_total"}
    routes = {dict(k[1]).get("route") for k in samples if k[0] == "segagent_http_requests_total"}
    assert labels <= {"GET", "POST", "other"}, labels
    assert routes <= {"/predict", "/metrics", "unmatched"}, routes


def test_openapi_describes_every_route(client):
    from jsonschema import Draft202012Validator

    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    paths = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert paths == {("GET", "/"), ("GET", "/health"), ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"),
                     ("POST", "/audit"), ("GET", "/versions"), ("GET", "/metrics"), ("GET", "/openapi.json")}
    for path in ("/setup", "/predict", "/webhook"):  # the examples follow the schemas the app validates with
        media = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        Draft202012Validator.check_schema(media["schema"])
        Draft202012Validator(media["schema"]).validate(media["example"])


def test_openapi_limits_follow_the_settings(make_client):
    spec = make_client(SEGAGENT_MAX_TASKS=7).get("/openapi.json").json
    tasks = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["tasks"]
    assert tasks["maxItems"] == 7 and tasks["x-setting"] == "SEGAGENT_MAX_TASKS"


def test_an_unexpected_error_is_a_generic_500_with_a_request_id(make_settings, caplog):
    from segagent_backend.app import create_app

    app = create_app(make_settings())

    @app.get("/boom")
    def boom():
        raise KeyError("/work/secret/path.py")

    reply = app.test_client().get("/boom")
    assert reply.status_code == 500 and reply.is_json
    text = reply.get_data(as_text=True)
    assert "KeyError" not in text and "/work" not in text and "internal error" in reply.json["error"]
    assert reply.json["request_id"] == reply.headers["X-Request-Id"]
    assert any(reply.json["request_id"] in r.getMessage() for r in caplog.records)  # the detail is in the log
