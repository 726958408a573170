"""``segagent trajectories``: a folder of images + masks -> a SegAgent trace file."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tests.conftest import make_disk_image
from segagent_backend.cli import main
from trainer.traces import read_traces
from trainer.trajectories import final_iou


@pytest.fixture
def folder(tmp_path):
    """Two synthetic images (a red disk each) with their masks, and a manifest of expressions."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, centre in (("left", (60, 60)), ("right", (100, 60))):
        image, mask = make_disk_image(centre=centre, radius=25)
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), mask.astype(np.uint8) * 255)
    (tmp_path / "expressions.json").write_text(json.dumps({"left": "the left disk", "right": "the right disk"}))
    return tmp_path


def test_writes_traces_and_a_summary(folder, capsys, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(folder / "models"))
    out = folder / "out" / "traces.json"
    code = main(["trajectories", "--images", str(folder / "images"), "--masks", str(folder / "masks"),
                 "--manifest", str(folder / "expressions.json"), "--out", str(out), "--segmenter", "grabcut",
                 "--starts", "empty,points", "--max-clicks", "5", "--seed", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    traces = read_traces(out)
    assert [(t.image_name, t.start.kind if t.start else "empty") for t in traces] == \
           [("left.png", "empty"), ("left.png", "points"), ("right.png", "empty"), ("right.png", "points")]
    assert [t.captions for t in traces] == [["the left disk"]] * 2 + [["the right disk"]] * 2
    assert all(len(t.steps) <= 5 and final_iou(t) > 0.8 for t in traces)
    assert all(t.steps for t in traces if t.start is None)
    clicks = sum(len(t.steps) for t in traces)
    mean = np.mean([final_iou(t) for t in traces])
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"4 traces (2 images x empty,points), {clicks} clicks, "
                                                       f"mean final IoU {mean:.3f}")
    info = json.loads(out.read_text())["info"]["args"]
    assert info["segmenter"] == "grabcut" and info["starts"] == ["empty", "points"] and info["max_clicks"] == 5
    assert "trajectories" in captured.err  # the progress bar


def test_bad_input_is_reported_clearly(folder, capsys, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(folder / "models"))
    monkeypatch.setenv("SEGAGENT_SEGMENTER", "grabcut")
    monkeypatch.delenv("SEGAGENT_SAM_CHECKPOINT", raising=False)
    cv2.imwrite(str(folder / "masks" / "right.png"), np.zeros((120, 160), np.uint8))
    args = ["trajectories", "--images", str(folder / "images"), "--masks", str(folder / "masks"),
            "--out", str(folder / "t.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "segagent trajectories: 1 problem(s)" in err and "right: mask right.png has no object pixel" in err
    assert not (folder / "t.json").exists()
    assert main(args[:-2] + ["--out", str(folder / "t.json"), "--segmenter", "sam"]) == 2
    assert "SEGAGENT_SAM_CHECKPOINT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args + ["--starts", "empty,corner"])
    assert "give some of empty,box,points" in capsys.readouterr().err
