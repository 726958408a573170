"""``segagent train`` on data you have (folders, trace files, a Label Studio export) and ``segagent training``."""
from __future__ import annotations

import json
import os
import socket

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from segagent_backend.cli import main
from segagent_backend.learning import TrainReport, _save, list_reports
from segagent_backend.registry import Registry
from segagent_backend.settings import Settings
from tests.conftest import make_disk_image

FAST = ["--method", "full", "--lr", "0.003", "--batch", "8", "--max-steps", "3"]


@pytest.fixture(scope="module")
def base(tiny_qwen2_vl):
    return tiny_qwen2_vl  # shared read-only: training writes to its own --out, --register copies it


@pytest.fixture
def data(tmp_path, monkeypatch):
    """data/images + data/masks + manifest.json with two disks; MODEL_DIR in tmp."""
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("DEVICE", "cpu")
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for name, centre in (("left", (60, 60)), ("right", (100, 60))):
        image, mask = make_disk_image(centre=centre, radius=25)
        cv2.imwrite(str(tmp_path / "data" / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "data" / "masks" / f"{name}.png"), mask.astype(np.uint8) * 255)
    (tmp_path / "data" / "manifest.json").write_text(json.dumps({"left": "the left disk", "right": "the right disk"}))
    return tmp_path / "data"


def test_train_on_a_folder_registers_a_loadable_version(data, base, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--base", str(base), "--out", str(out), "--register", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "2 SFT samples from 2 image(s)" in printed  # one click per disk; no stop samples by default
    assert (out / "model" / "config.json").is_file() and (out / "rounds" / "0" / "loss.png").is_file()
    registry = Registry(tmp_path / "models")
    (version,) = registry.list_versions()
    assert version.base == str(base) and version.counts == {"sft_samples": 2, "images": 2}
    assert registry.current().version is None  # registered, not promoted


def test_train_on_traces_and_a_label_studio_export(data, base, tmp_path, capsys, media_server, disk_image):
    traces = tmp_path / "traces.json"
    assert main(["trajectories", "--images", str(data / "images"), "--masks", str(data / "masks"),
                 "--manifest", str(data / "manifest.json"), "--out", str(traces)]) == 0
    from tests.service.payloads import CONFIG

    region = {"type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": 160,
              "original_height": 120, "value": {"rle": mask2rle(disk_image[1].astype(np.uint8) * 255),
                                                "brushlabels": ["Banana"]}}
    export = [{"id": 1, "data": {"image": f"{media_server}/disk.png", "expression": "the red disk"},
               "annotations": [{"id": 5, "result": [region]}]},
              {"id": 2, "data": {"image": f"{media_server}/disk.png"}, "annotations": [{"id": 6, "result": []}]}]
    (tmp_path / "export.json").write_text(json.dumps(export))
    (tmp_path / "config.xml").write_text(CONFIG)
    code = main(["train", "--data", str(traces), "--images", str(data / "images"), "--data", str(tmp_path / "export.json"),
                 "--label-config", str(tmp_path / "config.xml"), "--base", str(base), "--out", str(tmp_path / "run"),
                 "--stop-samples", *FAST])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped task 2 (annotation 6): no brush region" in printed
    assert "6 SFT samples from 3 image(s)" in printed  # one click and one stop per image (--stop-samples)


def test_training_list_reports_a_killed_round(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models")})
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)  # a pid that surely ended
    _save(settings, TrainReport("r1", 3, "corrections", pid=dead, host=socket.gethostname()))
    _save(settings, TrainReport("r2", 3, "corrections"))  # this process: still running
    assert [(r.run, r.status) for r in list_reports(settings)] == [("r1", "killed"), ("r2", "running")]
    assert main(["training", "list"]) == 0
    assert "killed" in capsys.readouterr().out


def test_train_the_released_segagent_qwen_further_into_a_version_that_serves(data, tmp_path, capsys, monkeypatch):
    """``segagent train --base <released folder>``: LoRA on the native Qwen-VL-Chat, registered, promoted,
    loaded back through the production policy loader and run by ``segagent predict``."""
    from tests.oracle.tiny_qwen import ORACLE_CODE, oracle_code_dir, random_state_dict, save_checkpoint, tiny_config

    if oracle_code_dir() is None:
        pytest.skip(f"qwen.tiktoken absent at {ORACLE_CODE}")
    config = tiny_config()
    released = save_checkpoint(tmp_path / "SegAgent-Model", config, random_state_dict(config, seed=2))
    monkeypatch.setenv("SEGAGENT_POLICY_KIND", "qwen-vl-chat")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--base", str(released), "--out", str(out), "--register",
                 "--method", "lora", "--lr", "0.01", "--batch", "2", "--max-steps", "2"]) == 0
    assert "2 SFT samples from 2 image(s)" in capsys.readouterr().out
    registry = Registry(tmp_path / "models")
    (version,) = registry.list_versions()
    assert main(["versions", "promote", version.version]) == 0
    monkeypatch.setenv("SEGAGENT_POLICY", str(released))  # the fallback; the promoted version replaces it
    assert main(["predict", "--image", str(data / "images" / "left.png"), "--expression", "the left disk",
                 "--json", str(tmp_path / "out.json")]) == 0
    predicted = json.loads((tmp_path / "out.json").read_text())
    assert predicted["model_version"] == version.version
