"""`segagent predict --mask PNG`: the episode starts from a given mask; clicks refine it."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from segagent_backend.cli import main


def decoded(data: dict) -> np.ndarray:
    return coco_mask.decode({"size": data["mask"]["size"], "counts": data["mask"]["counts"].encode()}).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture
def start_png(tmp_path, disk_image):
    """The disk moved 12 px right (misses its left side), saved as a 0/255 PNG."""
    _, truth = disk_image
    start = np.zeros_like(truth)
    start[:, 12:] = truth[:, :-12]
    path = tmp_path / "start.png"
    Image.fromarray(start.astype(np.uint8) * 255).save(path)
    return path, start


def test_a_click_refines_the_given_mask(media_dir, disk_image, start_png, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    _, truth = disk_image
    path, start = start_png
    out = tmp_path / "out.json"
    code = main(["predict", "--image", str(media_dir / "disk.png"), "--mask", str(path), "--click", "56,60",
                 "--json", str(out)])
    assert code == 0
    assert f"from the mask {path}" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["trajectory"] == [{"x": 56.0, "y": 60.0, "positive": True, "iou_estimate": None}]
    assert iou(decoded(data), truth) > iou(start, truth) + 0.1
    # without the mask the same click segments from scratch: another mask
    main(["predict", "--image", str(media_dir / "disk.png"), "--click", "56,60", "--json", str(out)])
    assert not np.array_equal(decoded(json.loads(out.read_text())), decoded(data))


def test_a_mask_with_transparency_uses_its_alpha(media_dir, disk_image, start_png, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    _, start = start_png
    rgba = np.zeros((*start.shape, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere: only the alpha says where the object is
    rgba[..., 3] = start * 255
    path, out = tmp_path / "alpha.png", tmp_path / "out.json"
    Image.fromarray(rgba).save(path)
    opaque = tmp_path / "opaque.json"
    main(["predict", "--image", str(media_dir / "disk.png"), "--mask", str(start_png[0]), "--click", "120,60,-",
          "--json", str(opaque)])
    assert main(["predict", "--image", str(media_dir / "disk.png"), "--mask", str(path), "--click", "120,60,-",
                 "--json", str(out)]) == 0
    assert np.array_equal(decoded(json.loads(out.read_text())), decoded(json.loads(opaque.read_text())))


@pytest.mark.parametrize("make, message", [
    (lambda d: Image.new("L", (80, 60)).save(d / "m.png"), "the mask is 80x60, the image is 160x120"),
    (lambda d: (d / "m.png").write_bytes(b"not a picture"), "not a readable picture"),
    (lambda d: None, "no such file"),
])
def test_a_bad_mask_is_one_line_and_exit_2(media_dir, tmp_path, monkeypatch, capsys, make, message):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    make(tmp_path)
    code = main(["predict", "--image", str(media_dir / "disk.png"), "--mask", str(tmp_path / "m.png"),
                 "--click", "56,60"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("segagent predict: ")


def test_a_mask_alone_needs_clicks_or_a_policy(media_dir, start_png, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("SEGAGENT_POLICY", raising=False)
    code = main(["predict", "--image", str(media_dir / "disk.png"), "--mask", str(start_png[0])])
    assert code == 2 and "give --click to refine --mask" in capsys.readouterr().err
