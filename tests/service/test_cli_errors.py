"""The CLI speaks to people: a mistake is one line on standard error and exit status 2, never a
traceback; outputs are checked before any work; a summary unless ``--json``; help on every option."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segagent_backend.cli import build_parser, main
from segagent_backend.cli.arguments import join_signed_values

REPO = Path(__file__).resolve().parents[2]
SEGAGENT = REPO / ".venv" / "bin" / "segagent"


def segagent(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The installed ``segagent`` script (``python -m segagent_backend.cli`` without a venv)."""
    command = [str(SEGAGENT)] if SEGAGENT.exists() else [sys.executable, "-m", "segagent_backend.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, **kwargs)


def one_line_error(stderr: str, *words: str) -> str:
    """The one stderr line, checked: no traceback, names the command and each of ``words``."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and lines[0].startswith("segagent ")
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def image(media_dir) -> str:
    return str(media_dir / "disk.png")  # 160 x 120


@pytest.fixture(autouse=True)
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    for var in ("SEGAGENT_POLICY", "SEGAGENT_SEGMENTER", "SEGAGENT_SAM_MODEL", "SEGAGENT_SAM_CHECKPOINT"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "models"


# ----- outputs are checked before any work ----------------------------------------------------------
def test_png_into_a_missing_folder_writes_nothing(image, tmp_path):
    out = tmp_path / "out.json"
    done = segagent("predict", "--image", image, "--click", "80,60", "--json", str(out),
                    "--png", str(tmp_path / "missing" / "x.png"))
    assert done.returncode == 2
    one_line_error(done.stderr, "--png", "does not exist")
    assert not out.exists() and done.stdout == ""


def test_png_with_an_unknown_extension_writes_nothing(image, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["predict", "--image", image, "--click", "80,60", "--json", str(out),
                 "--png", str(tmp_path / "x.xyz")]) == 2
    one_line_error(capsys.readouterr().err, "'.xyz'", ".png")
    assert not out.exists()


def test_json_into_a_missing_folder_or_onto_a_folder(image, tmp_path, capsys):
    assert main(["predict", "--image", image, "--click", "80,60", "--json", str(tmp_path / "no" / "o.json")]) == 2
    one_line_error(capsys.readouterr().err, "--json", "does not exist")
    assert main(["predict", "--image", image, "--click", "80,60", "--json", str(tmp_path)]) == 2
    one_line_error(capsys.readouterr().err, "--json", "folder")


def test_a_jpeg_picture_is_fine(image, tmp_path, capsys):
    assert main(["predict", "--image", image, "--click", "80,60", "--png", str(tmp_path / "x.jpeg")]) == 0
    assert (tmp_path / "x.jpeg").stat().st_size > 0


# ----- clicks and boxes --------------------------------------------------------------------------------
@pytest.mark.parametrize("click", ["160,60", "80,120", "80,-1,-", "1000,1000"])
def test_a_click_outside_the_image_is_an_error(image, click, capsys):
    assert main(["predict", "--image", image, "--click", "80,60", "--click", click]) == 2
    one_line_error(capsys.readouterr().err, "click 2", "outside", "160x120")


def test_a_box_outside_the_image_is_an_error(image, capsys):
    assert main(["predict", "--image", image, "--box", "10,10,170,50"]) == 2
    one_line_error(capsys.readouterr().err, "box", "outside", "160x120")
    assert main(["predict", "--image", image, "--box", "10,10,10,50"]) == 2
    one_line_error(capsys.readouterr().err, "box", "empty")


def test_a_negative_click_parses_then_is_outside(image):
    done = segagent("predict", "--image", image, "--click", "-5,10")
    assert done.returncode == 2
    one_line_error(done.stderr, "(-5,10)", "outside", "160x120")


def test_signed_values_are_joined_to_their_option():
    assert join_signed_values(["predict", "--click", "-5,10", "--click", "3,4", "--box", "-.5,1,2,3"]) == \
           ["predict", "--click=-5,10", "--click", "3,4", "--box=-.5,1,2,3"]
    assert join_signed_values(["predict", "--click", "-h"]) == ["predict", "--click", "-h"]  # an option stays
    assert join_signed_values(["x", "--", "--click", "-5,1"]) == ["x", "--", "--click", "-5,1"]


def test_a_click_on_the_last_pixel_is_inside(image, capsys):
    assert main(["predict", "--image", image, "--click", "159,119,-", "--click", "0,0,-", "--click", "80,60"]) == 0


# ----- a summary unless --json -------------------------------------------------------------------------
def test_without_json_a_short_summary(image, tmp_path, capsys):
    png = tmp_path / "x.png"
    assert main(["predict", "--image", image, "--click", "80,60", "--click", "20,20,-", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and len(out) < 600 and len(out.splitlines()) <= 5
    assert "160x120" in out and "80,60 +; 20,20 -" in out and "% of the image" in out and "score" in out
    assert "segagent-grabcut" in out and str(png) in out


def test_json_to_a_file_still_summarises_and_json_dash_prints_it(image, tmp_path, capsys):
    out = tmp_path / "o.json"
    assert main(["predict", "--image", image, "--box", "45,25,115,95", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "box 45,25,115,95" in printed
    assert json.loads(out.read_text())["box"] == [45.0, 25.0, 115.0, 95.0]
    assert main(["predict", "--image", image, "--box", "45,25,115,95", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["width"], data["height"]) == (160, 120) and data["mask"]["size"] == [120, 160]


# ----- models: one line, fast ---------------------------------------------------------------------------
def test_an_unknown_hub_id_offline_is_one_fast_line(image):
    began = time.monotonic()
    done = segagent("predict", "--image", image, "--expression", "the disk",
                    env={"SEGAGENT_POLICY": "nobody/no-such-model", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and time.monotonic() - began < 20
    one_line_error(done.stderr, "SEGAGENT_POLICY='nobody/no-such-model'", "HF_HUB_OFFLINE")


def test_an_unreachable_hub_is_one_line(image, monkeypatch, capsys):
    import huggingface_hub

    from segagent_backend.cli import models as cli_models

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(cli_models, "hub_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    monkeypatch.setenv("SEGAGENT_SEGMENTER", "hf-sam")
    monkeypatch.setenv("SEGAGENT_SAM_MODEL", "nobody/no-such-sam")
    assert main(["predict", "--image", image, "--click", "80,60"]) == 2
    one_line_error(capsys.readouterr().err, "SEGAGENT_SAM_MODEL='nobody/no-such-sam'", "unreachable")


@pytest.mark.parametrize("name", ["./no-such-folder", "a/b/c", "not a name!"])
def test_a_missing_model_folder_or_bad_id_is_one_line(image, name, capsys, monkeypatch):
    monkeypatch.setenv("SEGAGENT_POLICY", name)
    assert main(["predict", "--image", image, "--expression", "the disk"]) == 2
    one_line_error(capsys.readouterr().err, f"SEGAGENT_POLICY={name!r}")


def test_a_broken_model_folder_is_one_line(image, tmp_path):
    broken = tmp_path / "broken-policy"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    done = segagent("predict", "--image", image, "--expression", "the disk", env={"SEGAGENT_POLICY": str(broken)})
    assert done.returncode == 2
    one_line_error(done.stderr, "SEGAGENT_POLICY", "broken-policy", "cannot load")


def test_an_empty_sam_folder_is_one_line(image, tmp_path):
    (tmp_path / "sam").mkdir()
    done = segagent("predict", "--image", image, "--click", "80,60",
                    env={"SEGAGENT_SEGMENTER": "hf-sam", "SEGAGENT_SAM_MODEL": str(tmp_path / "sam")})
    assert done.returncode == 2
    one_line_error(done.stderr, "SEGAGENT_SAM_MODEL", "cannot load")


# ----- settings, pipes, training list, input files -----------------------------------------------------
def test_settings_check_the_environment_first():
    done = segagent("settings", env={"SEGAGENT_SEGMENTER": "bogus"})
    assert done.returncode == 2 and done.stdout == ""
    one_line_error(done.stderr, "SEGAGENT_SEGMENTER='bogus'")


def test_settings_into_head_is_quiet(tmp_path):
    command = [str(SEGAGENT)] if SEGAGENT.exists() else [sys.executable, "-m", "segagent_backend.cli"]
    done = subprocess.run(f"{shlex.join(command)} settings | head -1", shell=True, capture_output=True, text=True,
                          timeout=120)
    assert done.stderr == "" and done.stdout.startswith("| variable |")


def test_a_closed_stdout_ends_quietly_in_process(monkeypatch, capsys):
    from segagent_backend.cli import settings as settings_command

    def closed():
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(settings_command, "settings_table", closed)
    assert main(["settings"]) == 141
    assert capsys.readouterr().err == ""


def test_training_list_says_when_there_are_no_rounds(capsys):
    assert main(["training", "list"]) == 0
    out = capsys.readouterr().out
    assert "no training rounds" in out and "segagent training run" in out


def test_training_run_without_a_policy_is_one_line(capsys):
    assert main(["training", "run"]) == 2
    one_line_error(capsys.readouterr().err, "SEGAGENT_POLICY")


def test_a_missing_input_file_is_one_line(tmp_path, capsys):
    assert main(["predict", "--image", str(tmp_path / "none.png"), "--click", "1,2"]) == 2
    one_line_error(capsys.readouterr().err, "does not exist")
    assert main(["train", "--data", str(tmp_path / "none.json"), "--base", str(tmp_path), "--out",
                 str(tmp_path / "run")]) == 2
    one_line_error(capsys.readouterr().err, "none.json", "No such file")


# ----- help everywhere -----------------------------------------------------------------------------------
def test_every_option_and_positional_has_help():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    described = {choice.dest: choice.help for choice in sub._choices_actions}
    missing = [name for name in sub.choices if not described.get(name)]
    for name, command in sub.choices.items():
        missing += [f"{name} {action.option_strings or action.dest}" for action in command._actions
                    if not action.help or action.help == argparse.SUPPRESS]
    assert not missing, f"no help text: {missing}"
    assert len(sub.choices) >= 10 and sub.help
