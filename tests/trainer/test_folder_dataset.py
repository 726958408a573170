"""``load_folder``: images + masks paired by stem, manifests, and clear errors for bad folders."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from trainer.datasets import load_folder, load_grabcut, read_mask


def write_pair(root, stem, size=(40, 30), value=255, suffix=".jpg", band=False):
    """An image ``images/<stem><suffix>`` and a mask ``masks/<stem>.png`` (W x H = ``size``) with a
    square object of ``value`` (and a 128 band around it when ``band``)."""
    w, h = size
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    image = np.full((h, w, 3), (30, 90, 200), np.uint8)  # BGR on disk
    mask = np.zeros((h, w), np.uint8)
    if band:
        mask[3:h - 3, 3:w - 3] = 128
    mask[5:h - 5, 5:w - 5] = value
    cv2.imwrite(str(root / "images" / f"{stem}{suffix}"), image)
    cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
    return mask


def test_pairs_by_stem_and_reads_mask_values(tmp_path):
    trimap = write_pair(tmp_path, "b", band=True)
    write_pair(tmp_path, "a", value=1, suffix=".png")  # a 0/1 mask
    write_pair(tmp_path, "c", size=(50, 20))
    cv2.imwrite(str(tmp_path / "masks" / "orphan.png"), np.zeros((5, 5), np.uint8))  # no image: not used
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    samples = load_folder(tmp_path / "images", tmp_path / "masks")
    assert [s.name for s in samples] == ["a", "b", "c"]
    assert [s.image_file for s in samples] == ["a.png", "b.jpg", "c.jpg"]
    a, b, c = samples
    assert a.gt.sum() == 30 * 20 and not a.ignore.any() and a.expression == "" and a.captions == ()
    assert np.array_equal(b.gt, trimap == 255) and np.array_equal(b.ignore, trimap == 128)
    assert c.image.shape == (20, 50, 3) and c.image.dtype == np.uint8
    assert np.abs(c.image[0, 0].astype(int) - (200, 90, 30)).max() <= 2  # RGB (a JPEG: nearly)
    assert c.gt.dtype == bool and c.gt.shape == (20, 50)


def test_manifest_rows_choose_samples_and_captions(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    rows = [{"image": "b.jpg", "captions": ["the square", "a blue box"]},
            {"image": "a", "expression": "the thing", "name": "first"}]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    b, a = load_folder(tmp_path / "images", tmp_path / "masks", tmp_path / "m.json")
    assert (b.name, b.expression, b.captions) == ("b", "the square", ("the square", "a blue box"))
    assert (a.name, a.expression, a.captions) == ("first", "the thing", ("the thing",))


def test_manifest_dict_gives_expressions(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "m.json").write_text(json.dumps({"a.jpg": "the left one", "b": ["one", "two"]}))
    a, b = load_folder(tmp_path / "images", tmp_path / "masks", tmp_path / "m.json")
    assert (a.expression, b.captions) == ("the left one", ("one", "two"))
    (tmp_path / "m.json").write_text(json.dumps({"zzz": "nothing"}))
    with pytest.raises(ValueError, match="'zzz': no such image"):
        load_folder(tmp_path / "images", tmp_path / "masks", tmp_path / "m.json")


def test_bad_folders_are_reported_together(tmp_path):
    write_pair(tmp_path, "good")
    write_pair(tmp_path, "empty", value=0)
    write_pair(tmp_path, "band_only", value=128)
    write_pair(tmp_path, "small")
    cv2.imwrite(str(tmp_path / "masks" / "small.png"), np.zeros((10, 10), np.uint8))
    write_pair(tmp_path, "lonely")
    (tmp_path / "masks" / "lonely.png").unlink()
    with pytest.raises(ValueError) as info:
        load_folder(tmp_path / "images", tmp_path / "masks")
    text = str(info.value)
    assert text.startswith("4 problem(s)")
    assert "empty: mask empty.png has no object pixel" in text
    assert "band_only: mask band_only.png has no object pixel (it holds only the ignore value 128)" in text
    assert "small: mask small.png is 10x10 (WxH), image small.jpg is 40x30" in text
    assert "lonely: no mask for lonely.jpg" in text and "good" not in text
    with pytest.raises(ValueError, match="does not exist"):
        load_folder(tmp_path / "nowhere", tmp_path / "masks")
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_folder(tmp_path / "none", tmp_path / "masks")
    with pytest.raises(FileNotFoundError):
        read_mask(tmp_path / "missing.png")


def test_grabcut_set_loads_the_same_as_load_grabcut(grabcut_dir):
    names = ["106024", "124080"]
    rows = [r for r in json.loads((grabcut_dir / "manifest.json").read_text()) if r["name"] in names]
    manifest = grabcut_dir / "manifest.json"
    ours = [s for s in load_folder(grabcut_dir / "images", grabcut_dir / "masks", manifest) if s.name in names]
    theirs = load_grabcut(grabcut_dir, names)
    assert len(ours) == len(theirs) == len(rows) == 2
    for a, b in zip(ours, theirs):
        assert (a.name, a.expression) == (b.name, b.expression)
        assert np.array_equal(a.gt, b.gt) and np.array_equal(a.ignore, b.ignore) and np.array_equal(a.image, b.image)
