"""Every 4xx/5xx reaches the log with its reason, task id and request id; /health tallies them; no secret is
ever logged. (Label Studio's labeling screen drops a click's reason: the log and /health are where it is.)"""
from __future__ import annotations

import base64
import http.server
import logging
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from payloads import keypoint, predict_body
from segagent_backend.error_log import (MAX_REASON, ErrorEvent, Redactor, RecentErrors, accepted_request_id,
                                        task_ids)
from segagent_backend.labelstudio.predictions import EMPTY_MASK

NEGATIVE_ALONE = [keypoint(50.0, 50.0, 160, 120, positive=False)]  # grabcut: an empty mask
CLICK = [keypoint(50.0, 50.0, 160, 120)]
LOGGER = "segagent_backend.error_log"


def error_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def the_line(caplog, *words: str) -> logging.LogRecord:
    found = [r for r in error_lines(caplog) if all(w in r.getMessage() for w in words)]
    assert len(found) == 1, [r.getMessage() for r in error_lines(caplog)]
    return found[0]


# ----- the log lines -----------------------------------------------------------------------------------------
def test_an_empty_mask_click_is_logged_with_its_reason_task_and_the_callers_request_id(client, media_server, caplog):
    caplog.set_level(logging.INFO)
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", NEGATIVE_ALONE, task_id=41),
                        headers={"X-Request-ID": "ls-req-0001"})
    assert reply.status_code == 422 and reply.json["results"][0]["error"] == EMPTY_MASK
    assert reply.headers["X-Request-ID"] == "ls-req-0001"  # Label Studio's (or the proxy's) id comes back
    line = the_line(caplog, "422")
    assert line.levelno == logging.WARNING
    assert line.getMessage() == f"POST /predict 422 request_id=ls-req-0001 task_id=41: {EMPTY_MASK}"


def test_a_url_that_is_not_http_is_logged_with_a_generated_request_id(client, caplog):
    caplog.set_level(logging.INFO)
    reply = client.post("/predict", json=predict_body("ftp://example.com/disk.png", CLICK, task_id=42))
    assert reply.status_code == 422
    request_id = reply.headers["X-Request-ID"]
    assert accepted_request_id(request_id) and reply.json["request_id"] == request_id  # one id, body and header
    line = the_line(caplog, "422")
    assert line.levelno == logging.WARNING
    message = line.getMessage()
    assert f"request_id={request_id}" in message and "task_id=42" in message and "not an http(s)" in message


def test_a_whole_request_error_names_the_tasks_of_the_body(client, media_server, caplog):
    region = keypoint(50, 50, 160, 120)
    region["type"] = "polygonlabels"  # not a click type: the request's fault, 400 before any task runs
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", [region], task_id=43))
    assert reply.status_code == 400
    message = the_line(caplog, "400").getMessage()
    assert message.startswith("POST /predict 400 request_id=") and "task_id=43" in message
    assert reply.json["error"] in message


def test_a_5xx_is_logged_at_error(client, caplog):
    reply = client.post("/predict", json=predict_body("http://127.0.0.1:9/x.png", CLICK, task_id=44))
    assert reply.status_code == 502
    line = the_line(caplog, "502")
    assert line.levelno == logging.ERROR and "could not be fetched" in line.getMessage()


def test_only_failed_tasks_of_a_partly_good_reply_are_logged(client, media_server, caplog):
    body = predict_body(f"{media_server}/disk.png", CLICK, task_id=45)
    body["tasks"].append({"id": 46, "data": {"image": f"{media_server}/missing.png", "expression": "x"}})
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200 and "result" in reply.json["results"][0]
    assert [r.getMessage().split(":")[0].rsplit(" ", 1)[-1] for r in error_lines(caplog)] == ["task_id=46"]


def test_a_callers_request_id_that_could_forge_a_line_is_replaced(client, caplog):
    reply = client.post("/predict", data="{", content_type="application/json",
                        headers={"X-Request-ID": "x task_id=999: FAKE"})
    assert reply.status_code == 400
    request_id = reply.headers["X-Request-ID"]
    assert "FAKE" not in request_id and accepted_request_id(request_id)
    assert accepted_request_id("a" * 65) is None and accepted_request_id("ls-1:2.3_4") == "ls-1:2.3_4"
    assert f"request_id={request_id} task_id=-:" in the_line(caplog, "400").getMessage()


def test_an_unknown_route_is_logged_without_the_callers_path(client, caplog):
    assert client.get("/no/such/route").status_code == 404
    assert the_line(caplog, "404").getMessage().startswith("GET unmatched 404 ")


def test_health_polls_are_not_logged(make_settings, caplog):
    from segagent_backend.app import create_app
    from segagent_backend.errors import ModelUnavailable
    from segagent_backend.model_host import ModelHost

    def broken(settings, cache):
        raise RuntimeError("broken weights")

    settings = make_settings()
    host = ModelHost(settings, build_segmenter=broken)
    with pytest.raises(ModelUnavailable):
        host.load()
    client = create_app(settings, host).test_client()
    assert client.get("/health").status_code == 503
    assert error_lines(caplog) == []  # Label Studio polls it; its body says why


def test_a_busy_503_has_the_callers_request_id_and_is_logged(make_settings, caplog):
    from segagent_backend.app import create_app

    app = create_app(make_settings(THREADS="1"))
    entered, release = threading.Event(), threading.Event()

    @app.post("/hold")
    def hold():  # takes the one admitted slot until released
        entered.set()
        release.wait(10)
        return {}

    holder = threading.Thread(target=lambda: app.test_client().post("/hold"))
    holder.start()
    try:
        assert entered.wait(10)
        reply = app.test_client().post("/predict", json={}, headers={"X-Request-ID": "ls-busy-1"})
    finally:
        release.set()
        holder.join(10)
    assert reply.status_code == 503 and reply.json["busy"] is True
    assert reply.headers["X-Request-ID"] == "ls-busy-1"
    line = the_line(caplog, "ls-busy-1")
    assert line.levelno == logging.ERROR
    assert line.getMessage() == ("POST /predict 503 request_id=ls-busy-1 task_id=-: "
                                 "busy: more than THREADS=1 model requests at once")


# ----- /health and /metrics ---------------------------------------------------------------------------------
def test_health_counts_recent_errors_and_shows_the_last_reason(client, media_server):
    fresh = client.get("/health").json
    assert fresh["errors"]["total"] == 0 and fresh["errors"]["last"] is None
    client.post("/predict", json=predict_body(f"{media_server}/disk.png", NEGATIVE_ALONE, task_id=51))
    client.post("/predict", json=predict_body("ftp://example.com/disk.png", CLICK, task_id=52),
                headers={"X-Request-ID": "ls-req-0052"})
    reply = client.get("/health")
    assert reply.status_code == 200 and reply.json["status"] == "UP"  # Label Studio's contract is unchanged
    errors = reply.json["errors"]
    assert errors["total"] == 2 and errors["by_status"] == {"422": 2}
    assert errors["window_s"] == 900 and errors["per"] == "process" and isinstance(errors["pid"], int)
    last = errors["last"]
    assert "not an http(s)" in last["reason"] and last["status"] == 422
    assert last["task_ids"] == [52] and last["request_id"] == "ls-req-0052" and last["route"] == "/predict"
    assert last["at"].endswith("Z")


def test_metrics_count_errors_by_scope_and_status(client, media_server):
    client.post("/predict", json=predict_body(f"{media_server}/disk.png", NEGATIVE_ALONE))
    client.post("/predict", data="{", content_type="application/json")
    text = client.get("/metrics").get_data(as_text=True)
    samples = {(s.labels["scope"], s.labels["status"]): s.value
               for family in text_string_to_metric_families(text) if family.name == "segagent_errors"
               for s in family.samples if s.name == "segagent_errors_total"}
    assert samples == {("task", "422"): 1.0, ("request", "400"): 1.0}


# ----- no secret in the log ------------------------------------------------------------------------------------
API_KEY = "sk-ls-api-key-5f3e9a1b2c"
USER, PASSWORD = "annotator-admin", "basic-pass-7d41c9"
WRONG_PASSWORD = "wrong-pass-0e8b22"


class TokenHandler(http.server.BaseHTTPRequestHandler):
    """A Label Studio that wants another token: 401 for every file."""

    def do_GET(self):
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail": "Invalid token."}')

    def log_message(self, *args):
        pass


@pytest.fixture
def label_studio_401():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_no_token_or_password_reaches_the_log(make_client, label_studio_401, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level: the media download's lines included
    client = make_client(LABEL_STUDIO_URL=label_studio_401, LABEL_STUDIO_API_KEY=API_KEY,
                         BASIC_AUTH_USER=USER, BASIC_AUTH_PASS=PASSWORD)
    body = predict_body("/data/upload/3/disk.png", CLICK, task_id=61)  # the key goes in a header, as always
    reply = client.post("/predict", json=body, headers=basic(USER, PASSWORD))
    assert reply.status_code == 502 and "HTTP 401" in reply.json["results"][0]["error"]
    assert client.post("/predict", json=body, headers=basic(USER, WRONG_PASSWORD)).status_code == 401
    assert client.post("/setup", json={"schema": "<View/>"},
                       headers={"Authorization": f"Token {API_KEY}"}).status_code == 401

    media = the_line(caplog, " 502 ").getMessage()
    assert "task_id=61" in media and "HTTP 401 (check LABEL_STUDIO_API_KEY)" in media
    refused = [r.getMessage() for r in error_lines(caplog) if " 401 request_id=" in r.getMessage()]
    assert len(refused) == 2 and all("authentication required" in m for m in refused)
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records) + caplog.text
    for secret in SECRETS:
        assert secret not in logged


SECRETS = [API_KEY, PASSWORD, WRONG_PASSWORD, basic(USER, PASSWORD)["Authorization"].split()[1],
           basic(USER, WRONG_PASSWORD)["Authorization"].split()[1]]


def test_a_secret_inside_a_task_url_is_masked_in_the_error_lines(make_client, label_studio_401, caplog):
    client = make_client(LABEL_STUDIO_URL=label_studio_401, LABEL_STUDIO_API_KEY=API_KEY)
    for url in (f"/data/upload/3/disk.png?token={API_KEY}", f"{label_studio_401}/data/upload/3/x.png?sig=zz9"):
        assert client.post("/predict", json=predict_body(url, CLICK)).status_code == 502
    lines = [r.getMessage() for r in error_lines(caplog)]
    assert len(lines) == 2 and API_KEY not in lines[0] and "?token=***" in lines[0]
    assert "zz9" not in lines[1] and "x.png?***" in lines[1]


# ----- the parts ------------------------------------------------------------------------------------------------
def test_redactor_masks_urls_queries_userinfo_and_secrets():
    redact = Redactor(["s3cr3t-value", "abc", None])
    text = redact("image 'https://u:p@host/x.png?X-Amz-Signature=zz&token=t' failed: s3cr3t-value\nNEXT")
    assert text == "image 'https://***@host/x.png?***' failed: *** NEXT"
    assert redact("abc stays: too short to be told from ordinary text").startswith("abc")
    assert len(redact("x" * 5000)) == MAX_REASON + 3


def test_recent_errors_forget_what_left_the_window_and_stay_bounded():
    now = [1_000_000.0]
    recent = RecentErrors(window_s=900, bucket_s=60, clock=lambda: now[0])
    for minute in range(100):  # 100 minutes of errors: only the last 15 (and a bucket) are kept
        recent.record(ErrorEvent(422 if minute % 2 else 502, "r", "POST", "/predict", "id", (minute,),
                                 at=now[0] + minute * 60))
    now[0] += 99 * 60
    summary = recent.summary()
    assert len(recent._buckets) <= 16 and 15 <= summary["total"] <= 16
    assert summary["last"]["task_ids"] == [99]
    now[0] += 3600
    assert recent.summary()["total"] == 0 and recent.summary()["last"]["task_ids"] == [99]


def test_task_ids_keep_only_label_studio_ids():
    assert task_ids([{"id": 3}, {"id": "3"}, {"id": True}, {"id": -1}, "x", {"id": 9}]) == (3, 9)
    assert task_ids("not a list") == ()
