"""`segagent worker` and `segagent jobs` argument handling and output."""
from __future__ import annotations

import pytest

from segagent_backend.cli import main


def test_worker_and_jobs_need_redis(monkeypatch, capsys):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["worker"]) == 2 and "REDIS_URL" in capsys.readouterr().err
    assert main(["jobs"]) == 2 and "REDIS_URL" in capsys.readouterr().err


def test_worker_queues_are_checked(capsys):
    with pytest.raises(SystemExit):
        main(["worker", "--queues", "interactive,bogus"])
    assert "give some of interactive,batch,train" in capsys.readouterr().err


def test_jobs_lists_queues_in_priority_order(monkeypatch, capsys, queue_env):
    for key, value in queue_env.items():
        monkeypatch.setenv(key, value)
    assert main(["jobs"]) == 0
    out = capsys.readouterr().out
    prefix = queue_env["SEGAGENT_QUEUE_PREFIX"]
    assert out.index(f"{prefix}-interactive") < out.index(f"{prefix}-batch") < out.index(f"{prefix}-train")
    assert "workers: 0" in out and "failed (latest 20 per queue): 0" in out


def test_jobs_says_when_redis_is_unreachable(monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("SEGAGENT_REDIS_TIMEOUT", "0.5")
    assert main(["jobs"]) == 2 and "does not answer" in capsys.readouterr().err  # one line naming REDIS_URL


def test_web_process_in_queue_mode_does_not_need_the_weights(make_client, queue_env):
    """The weights live on the worker machines: a checkpoint path absent here must not stop the web."""
    reply = make_client(**queue_env, SEGAGENT_SEGMENTER="sam", SEGAGENT_SAM_CHECKPOINT="/nowhere/sam_vit_b.pth").get("/health")
    assert reply.status_code == 200 and reply.json["model_version"].startswith("segagent-sam-sam_vit_b")
