"""Native SimpleClick against the ORIGINAL code (the oracle) on tiny random checkpoints saved by that code.

scripts/simpleclick-oracle runs SimpleClick as SegAgent's release runs it (``../shared/oracles/simpleclick``:
``PlainVitModel``, ``load_model``, ``interpolate_pos_embed_inference``, ``get_predictor(..., 'NoBRS',
prob_thresh=0.49, zoom_in_params={'skip_clicks': -1, 'target_size': (448, 448)})``, ``Clicker``) in a separate
process with the oracle environment (scripts/oracle-env-simpleclick). It builds two tiny models, saves them as
the release's training does (config with the head's ``CrossEntropyLoss`` object), and records the probability
map, the mask and the zoom-in region after every click of one sequence, plus one direct network call. Here the
same files load through the production loader (the restricted unpickler) and the native tool replays the
clicks: every figure must agree to float rounding (ATOL: on this machine's CPU torch they agree to the bit; a
CUDA build of torch running on the CPU differed by 1.2e-7), every mask pixel that rounding cannot move across
the threshold exactly, every zoom-in region exactly.

Model ``a``: ViT depth 8, patch 16, trained at 224 (its position embedding is interpolated to 448), disks,
previous mask, head x1; its classifier bias is set so that masks are small and the zoom-in crops (and moves:
a positive click outside the region). Model ``b``: depth 12 (the 6-block groups), patch 14, trained at 448,
distance maps (no disks), head x4.

Skips, each with its reason: no ``../shared/oracles/simpleclick``; no ``.venv-oracle-simpleclick`` (build it
with scripts/oracle-env-simpleclick; ``make test`` does).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segagent_backend.agent.segmenters.simpleclick import ClickState, SimpleClickSegmenter, load_simpleclick
from segagent_backend.agent.segmenters.simpleclick.clicks import click_maps
from segagent_backend.agent.types import Click

REPO = Path(__file__).resolve().parents[2]
ORACLE = Path(os.environ.get("SIMPLECLICK_ORACLE", REPO.parent / "shared" / "oracles" / "simpleclick"))
LIB = REPO / ".venv-oracle-simpleclick" / "lib"
RUNNER = REPO / "scripts" / "simpleclick-oracle"

pytestmark = [
    pytest.mark.skipif(not (ORACLE / "isegm").is_dir(),
                       reason=f"SimpleClick reference code (the release's copy) absent at {ORACLE}"),
    pytest.mark.skipif(not LIB.is_dir(),
                       reason=f"the SimpleClick oracle environment is not built ({LIB}): run scripts/oracle-env-simpleclick"),
]

HEAD = dict(dropout_ratio=0.1, num_classes=1, align_corners=False, in_index=[0, 1, 2, 3])
MODELS = [
    dict(name="a", seed=0, positive_fraction=0.02,
         backbone=dict(img_size=[224, 224], patch_size=[16, 16], in_chans=3, embed_dim=64, depth=8, num_heads=4,
                       mlp_ratio=2, qkv_bias=True),
         neck=dict(in_dim=64, out_dims=[16, 32, 64, 128]),
         head=dict(HEAD, in_channels=[16, 32, 64, 128], upsample="x1", channels=32)),
    dict(name="b", seed=1, positive_fraction=0.02, use_disks=False, norm_radius=5,
         backbone=dict(img_size=[448, 448], patch_size=[14, 14], in_chans=3, embed_dim=32, depth=12, num_heads=2,
                       mlp_ratio=4, qkv_bias=True),
         neck=dict(in_dim=32, out_dims=[8, 16, 32, 64]),
         head=dict(HEAD, in_channels=[8, 16, 32, 64], upsample="x4", channels=16)),
]
#: (row, col, positive): the 3rd click lands inside the zoomed region, the 5th outside it (a new region)
ATOL = 1e-5
THRESHOLD = 0.49  # the release's prob_thresh
CLICKS = [[200, 300, 1], [60, 60, 0], [210, 350, 1], [330, 500, 0], [30, 540, 1]]


def make_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    h, w = 400, 560
    yy, xx = np.mgrid[:h, :w]
    img = (np.full((h, w, 3), 90) + rng.integers(0, 20, (h, w, 3))).astype(np.uint8)
    img[((yy - 200) / 50.0) ** 2 + ((xx - 300) / 70.0) ** 2 <= 1] = (200, 40, 40)
    return img


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("simpleclick_oracle")
    np.save(out / "image.npy", make_image())
    (out / "spec.json").write_text(json.dumps({"image": str(out / "image.npy"), "clicks": CLICKS, "models": MODELS}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        str(p) for p in (ORACLE / "deps" / "standins", ORACLE / "deps", LIB, ORACLE)))
    run = subprocess.run([sys.executable, str(RUNNER), "--spec", str(out / "spec.json"), "--out", str(out)],
                         env=env, cwd=out, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"the oracle failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return out


@pytest.mark.parametrize("name", ["a", "b"])
def test_the_network_matches_on_one_call(oracle, name):
    ref = np.load(oracle / f"{name}.npz")
    model = load_simpleclick(oracle / f"{name}.pth")  # the release's file, through the production loader
    model.backbone.resize_pos_embed((448, 448))
    x, pts = torch.from_numpy(ref["net_image"]), ref["net_points"]
    n = pts.shape[1] // 2  # the reference's layout: n positive slots, then n negative, (-1, -1) = none
    maps = torch.stack([click_maps([(r, c, i < n) for i, (r, c, _) in enumerate(row.tolist()) if max(r, c) >= 0],
                                   448, 448, model.cfg.norm_radius, model.cfg.use_disks) for row in pts])
    with torch.inference_mode():
        logits = model(x[:, :3], maps, x[:, 3:] if model.with_prev_mask else None).numpy()
    np.testing.assert_allclose(logits, ref["net_logits"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["a", "b"])
def test_probabilities_masks_and_zoom_regions_match_over_the_clicks(oracle, name):
    ref = np.load(oracle / f"{name}.npz")
    image = make_image()
    tool = SimpleClickSegmenter.from_checkpoint(oracle / f"{name}.pth", device="cpu")
    tool.set_image(image)
    state, clicks = None, []
    for step, (r, c, positive) in enumerate(CLICKS):
        clicks.append(Click(x=c, y=r, positive=bool(positive)))
        out = tool.segment(clicks, prev_logits=state)
        state = out.logits
        got = ClickState.unpack(state, *image.shape[:2])
        assert got.roi == tuple(ref["rois"][step]), f"click {step + 1}: zoom-in region"
        probs = got.probs.numpy()
        np.testing.assert_allclose(probs, ref["probs"][step], rtol=0, atol=ATOL, err_msg=f"click {step + 1}: probabilities")
        decided = np.abs(ref["probs"][step] - THRESHOLD) > ATOL  # pixels float noise cannot move across 0.49
        np.testing.assert_array_equal(out.mask[decided], ref["masks"][step][decided], err_msg=f"click {step + 1}: mask")
    if name == "a":  # the sequence exercised the zoom-in: a crop, kept, then replaced
        rois = [tuple(r) for r in ref["rois"]]
        whole = (0, image.shape[0] - 1, 0, image.shape[1] - 1)
        assert rois[0] == whole and rois[1] != whole and rois[2] == rois[1] and rois[4] != rois[1]
        assert all(0 < m.mean() < 0.2 for m in ref["masks"])
