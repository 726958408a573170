"""Model versions: register, promote, roll back, and hot reload in a running app (embedded mode).

The policies are two tiny random Qwen2-VL checkpoints (different seeds) loaded by the production
loader; what is checked is which version serves and is reported, not mask quality.
"""
from __future__ import annotations

import json
import time

import pytest

from payloads import predict_body
from segagent_backend.cli import main
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG
from segagent_backend.registry import Current, Registry, RegistryError


def test_register_list_promote_rollback(tmp_path):
    registry = Registry(tmp_path)
    source = tmp_path / "trained"
    source.mkdir()
    (source / "config.json").write_text("{}")
    assert registry.current() == Current() and registry.list_versions() == []
    v1 = registry.register(source, {"base": "tiny", "counts": {"tasks": 3}, "metrics": {"miou": 0.5}})
    assert v1.version == "v1" and v1.parent is None and v1.created_at > 0
    assert (registry.model_folder("v1") / "config.json").is_file() and source.is_dir()  # copied
    registry.promote("v1")
    v2 = registry.register(source, {"version": "exp-2"}, move=True)
    assert v2.parent == "v1" and not source.exists()
    assert [m.version for m in registry.list_versions()] == ["v1", "exp-2"]
    assert registry.list_versions()[0].metrics == {"miou": 0.5}
    now = registry.promote("exp-2")
    assert now.version == "exp-2" and now.history == ("v1", "exp-2") and registry.announced() == ("exp-2", 2)
    assert registry.rollback().version == "v1"
    assert registry.rollback().version is None  # back to SEGAGENT_POLICY
    assert registry.announced() == (None, 4)
    with pytest.raises(RegistryError):
        registry.rollback()
    with pytest.raises(RegistryError):
        registry.promote("nope")
    with pytest.raises(RegistryError):
        registry.register(tmp_path / "missing")
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]  # no staging or temp left


def test_promotion_is_announced_in_redis(tmp_path, redis_url):
    import uuid

    import redis

    prefix = f"t{uuid.uuid4().hex[:8]}"
    registry = Registry(tmp_path, redis_url, prefix)
    (tmp_path / "m").mkdir()
    registry.register(tmp_path / "m")
    conn = redis.Redis.from_url(redis_url)
    try:
        registry.promote("v1")
        assert json.loads(conn.get(f"{prefix}:model:current")) == {"version": "v1", "counter": 1}
        conn.set(f"{prefix}:model:current", json.dumps({"version": "v9", "counter": 7}))
        assert registry.announced() == ("v9", 7)  # Redis is what other machines read
    finally:
        conn.delete(f"{prefix}:model:current")


def test_cli_versions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    (tmp_path / "trained").mkdir()
    assert main(["versions", "register", str(tmp_path / "trained")]) == 2  # a folder holding no model
    assert "holds no model: no config.json" in capsys.readouterr().err
    (tmp_path / "trained" / "config.json").write_text("{}")
    assert main(["versions", "register", str(tmp_path / "trained")]) == 2
    assert "no weights" in capsys.readouterr().err
    (tmp_path / "trained" / "model.safetensors").write_bytes(b"")
    assert main(["versions", "register", str(tmp_path / "trained"), "--meta", '{"base": "b", "metrics": {"x": 1}}']) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main(["versions", "promote", "v1"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main(["versions", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["current"] == "v1" and listed["versions"][0]["base"] == "b"
    assert main(["versions", "rollback"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] is None
    assert main(["versions", "promote", "v7"]) == 2
    assert "no version 'v7'" in capsys.readouterr().err


def test_hot_reload_in_a_running_app(make_settings, tiny_policies, media_server, tmp_path):
    from segagent_backend.app import create_app
    from segagent_backend.labelstudio.predictions import EMPTY_MASK

    settings = make_settings(SEGAGENT_MAX_STEPS=2)
    registry = Registry(settings.model_dir)
    registry.register(tiny_policies[0], {"base": "tiny"})
    registry.register(tiny_policies[1], {"base": "tiny"})
    registry.promote("v1")
    app = create_app(settings)
    client = app.test_client()
    host = app.config["SEGAGENT_HOST"]
    body = predict_body(f"{media_server}/disk.png", None, config=EXAMPLE_CONFIG)

    def versions() -> tuple[str, str]:
        # /predict reloads a promoted version before answering; /setup never loads (3 s budget) and
        # reports what serves
        reply = client.post("/predict", json=body)
        entry = reply.json["results"][0]
        # a tiny random policy may end with an empty mask: then the task's answer is that message, no result
        assert (reply.status_code, "result" in entry) == (200, True) or (
            reply.status_code == 422 and entry["error"] == EMPTY_MASK), reply.json
        setup = client.post("/setup", json={"schema": EXAMPLE_CONFIG, "project": "1.1"})
        return setup.json["model_version"], reply.json["results"][0]["model_version"]

    assert versions() == ("v1", "v1")
    assert client.get("/versions").json["versions"] == ["v1", "v2"]
    first = host.serving_policy
    registry.promote("v2")  # no restart: the next request loads and reports v2
    assert client.post("/predict", json=body).json["results"][0]["model_version"] == "v2"
    assert host.serving_policy is not first
    assert versions() == ("v2", "v2")
    registry.rollback()
    assert versions() == ("v1", "v1")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    registry.register(broken, {"version": "broken"})
    registry.promote("broken")
    assert versions() == ("v1", "v1")  # the old version keeps serving
    health = client.get("/health")
    assert health.status_code == 200 and health.json["model_version"] == "v1"
    assert "broken" in health.json["reload_error"]
    registry.rollback()
    # /health (1 s budget) only notices the rollback and reloads off-thread: wait for that, bounded
    deadline = time.monotonic() + 10
    while "reload_error" in client.get("/health").json and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload_error" not in client.get("/health").json
