"""Queue mode: the web process logs and tallies the per-task errors its jobs answer, as embedded mode does."""
from __future__ import annotations

import logging

from tests.service.payloads import keypoint, predict_body

CLICK = [keypoint(50, 50, 160, 120)]
NEGATIVE_ALONE = [keypoint(50.0, 50.0, 160, 120, positive=False)]  # grabcut: an empty mask
LOGGER = "segagent_backend.error_log"


def lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_a_deadline_with_no_worker_is_logged_at_error_and_counted(queue_app, caplog):
    client = queue_app(SEGAGENT_INTERACTIVE_DEADLINE=1).test_client()
    reply = client.post("/predict", json=predict_body("http://127.0.0.1:9/x.png", CLICK, task_id=71),
                        headers={"X-Request-ID": "ls-queue-71"})
    assert reply.status_code == 504 and reply.headers["X-Request-ID"] == "ls-queue-71"
    (line,) = [r for r in lines(caplog) if "ls-queue-71" in r.getMessage()]
    assert line.levelno == logging.ERROR and "POST /predict 504 request_id=ls-queue-71 task_id=71:" in line.getMessage()
    errors = client.get("/health").json["errors"]
    assert errors["by_status"] == {"504": 1} and errors["last"]["task_ids"] == [71]
    assert errors["last"]["request_id"] == "ls-queue-71" and "SEGAGENT_INTERACTIVE_DEADLINE" in errors["last"]["reason"]


def test_a_workers_empty_mask_reaches_the_web_process_log(queue_app, workers, media_server, caplog):
    workers.start(1)
    client = queue_app().test_client()
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", NEGATIVE_ALONE, task_id=72),
                        headers={"X-Request-ID": "ls-queue-72"})
    assert reply.status_code == 422
    (line,) = [r for r in lines(caplog) if "ls-queue-72" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith("POST /predict 422 request_id=ls-queue-72 task_id=72: the mask is empty")
