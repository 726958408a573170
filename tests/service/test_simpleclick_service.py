"""SEGAGENT_SEGMENTER=simpleclick as a user runs it: settings, the model host, /predict."""
from __future__ import annotations

import pytest

from payloads import keypoint, predict_body
from segagent_backend.settings import SettingsError
from tests.agent.test_simpleclick import save_like_the_release, tiny_model


def test_the_service_serves_clicks_with_simpleclick(tmp_path, make_client, media_server):
    ckpt = save_like_the_release(tiny_model(), tmp_path / "tiny_release.pth")
    client = make_client(SEGAGENT_SEGMENTER="simpleclick", SEGAGENT_SIMPLECLICK_CHECKPOINT=str(ckpt))
    reply = client.post("/predict", json=predict_body(f"{media_server}/disk.png", [keypoint(50, 50, 160, 120)]))
    assert reply.status_code in (200, 422), reply.json  # a tiny random model may segment nothing
    assert reply.json["results"][0]["model_version"].startswith("segagent-simpleclick")


def test_a_missing_checkpoint_is_named_at_start(tmp_path, make_client):
    with pytest.raises(SettingsError, match="SEGAGENT_SIMPLECLICK_CHECKPOINT"):
        make_client(SEGAGENT_SEGMENTER="simpleclick", SEGAGENT_SIMPLECLICK_CHECKPOINT=str(tmp_path / "gone.pth"))
