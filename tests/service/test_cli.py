"""`segagent predict`: one local episode -> JSON (COCO RLE mask, trajectory, Label Studio result) and a PNG."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image
from pycocotools import mask as coco_mask

from segagent_backend.cli import main


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segagent_backend.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_predict_writes_json_and_png(media_dir, disk_image, tmp_path):
    _, truth = disk_image
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    code = main(["predict", "--image", str(media_dir / "disk.png"), "--expression", "the red disk",
                 "--click", "80,60,+", "--click", "20,20,-", "--json", str(out), "--png", str(png)])
    assert code == 0
    data = json.loads(out.read_text())
    assert (data["width"], data["height"], data["expression"]) == (160, 120, "the red disk")
    mask = coco_mask.decode({"size": data["mask"]["size"], "counts": data["mask"]["counts"].encode()}).astype(bool)
    assert mask.shape == (120, 160) and (mask & truth).sum() / (mask | truth).sum() > 0.85
    assert data["trajectory"] == [{"x": 80.0, "y": 60.0, "positive": True, "iou_estimate": None},
                                  {"x": 20.0, "y": 20.0, "positive": False, "iou_estimate": None}]
    brush, *keypoints = data["result"]
    assert np.array_equal(decode_rle(brush["value"]["rle"]).reshape(120, 160, 4)[:, :, 3] > 127, mask)
    assert [k["value"]["keypointlabels"] for k in keypoints] == [["positive"], ["negative"]]
    assert 0.0 <= data["score"] <= 1.0
    drawn = np.asarray(Image.open(png).convert("RGB"))
    assert drawn.shape == (120, 160, 3)


def test_predict_to_stdout_with_a_box(media_dir, disk_image, tmp_path):
    result = run_cli("predict", "--image", str(media_dir / "disk.png"), "--box", "45,25,115,95", "--json", "-",
                     env={"MODEL_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["box"] == [45.0, 25.0, 115.0, 95.0] and data["trajectory"] == []
    mask = coco_mask.decode({"size": data["mask"]["size"], "counts": data["mask"]["counts"].encode()}).astype(bool)
    assert (mask & disk_image[1]).sum() / (mask | disk_image[1]).sum() > 0.8


def test_bad_arguments_are_clear(media_dir, tmp_path):
    result = run_cli("predict", "--image", str(media_dir / "disk.png"), "--click", "1,2,?")
    assert result.returncode == 2 and "must be X,Y" in result.stderr
    result = run_cli("predict", "--image", str(media_dir / "disk.png"), "--expression", "the disk")
    assert result.returncode == 2 and "SEGAGENT_POLICY" in result.stderr
    result = run_cli("predict", "--image", str(tmp_path / "none.png"), "--click", "1,2")
    assert result.returncode == 2 and "does not exist" in result.stderr
