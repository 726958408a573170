"""``segagent eval --noc`` measures what annotators get: its click path IS the service's.

On a few synthetic images with GrabCut, the standard simulator's clicks go (a) through the NoC evaluation
(``trainer.evaluation.run_noc``, what ``segagent eval --noc`` runs) and (b) one request at a time through
POST /predict, as Label Studio sends them (every keypoint so far, in percent, Auto-Accept off); the mask
after every click must be the same, pixel for pixel, and so the NoC per image.
"""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from payloads import keypoint, predict_body
from segagent_backend.agent.metrics import noc
from segagent_backend.wiring import segmenter_from_settings
from tests.conftest import make_disk_image
from trainer.datasets import Sample
from trainer.evaluation import label_studio_clicks, run_noc

CLICKS = 6


def shapes() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image (H, W, 3) uint8, gt (H, W) bool) that need several clicks: the object is one of two touching
    disks of the same colour, a disk in heavy noise at low contrast, a ring (a hole of background colour)."""
    rng = np.random.default_rng(1)
    out = []
    image, mask = make_disk_image(160, 120, centre=(60, 60), radius=28)
    twin, other = make_disk_image(160, 120, centre=(105, 60), radius=24)
    image[other & ~mask] = twin[other & ~mask]
    out.append(("twins", image, mask))
    image, mask = make_disk_image(131, 97, centre=(70, 45), radius=25)
    image = np.clip(0.35 * image + 0.65 * np.array([70, 110, 80]) + rng.normal(0, 22, image.shape), 0, 255).astype(np.uint8)
    out.append(("faint", image, mask))
    image, mask = make_disk_image(140, 100, centre=(70, 50), radius=34)
    yy, xx = np.mgrid[:100, :140]
    hole = (xx - 70) ** 2 + (yy - 50) ** 2 <= 12 ** 2
    image[hole] = (70, 110, 80)
    ear = (xx - 104) ** 2 + (yy - 22) ** 2 <= 9 ** 2  # a part of the object in the background's colour
    image[ear] = (70, 110, 80)
    out.append(("ring", image, (mask & ~hole) | ear))
    return out


def served_mask(client, url: str, clicks, width: int, height: int) -> np.ndarray:
    """The mask POST /predict answers for these pixel clicks, sent as Label Studio sends them."""
    regions = [keypoint(100.0 * c.x / width, 100.0 * c.y / height, width, height, positive=c.positive, rid=f"k{i}")
               for i, c in enumerate(clicks)]
    reply = client.post("/predict", json=predict_body(url, regions))
    assert reply.status_code == 200, reply.json
    (prediction,) = reply.json["results"]
    if not prediction.get("result"):  # an empty mask is a per-task error, nothing stored
        assert "error" in prediction
        return np.zeros((height, width), bool)
    brush = next(r for r in prediction["result"] if r["type"] == "brushlabels")
    return decode_rle(brush["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 127


@pytest.mark.parametrize("name, image, gt", shapes(), ids=lambda v: v if isinstance(v, str) else "")
def test_eval_noc_and_predict_give_the_same_mask_after_every_click(name, image, gt, make_client, make_settings,
                                                                   media_dir, media_server):
    height, width = gt.shape
    Image.fromarray(image).save(media_dir / f"noc-{name}.png")
    url = f"{media_server}/noc-{name}.png"
    client = make_client()
    tool = segmenter_from_settings(make_settings())  # the tool as `segagent eval` loads it (cli.models.load_tool)
    run = run_noc(tool, Sample(name, image, gt, np.zeros_like(gt)), CLICKS, keep_masks=True)
    made = len(run.clicks)  # fewer than CLICKS only once the simulator finds no error left
    assert len(run.masks) == made and made >= 3, f"{name}: only {made} clicks, too easy to tell anything"
    served = []
    for k in range(1, made + 1):
        served.append(served_mask(client, url, run.clicks[:k], width, height))
        assert np.array_equal(served[-1], run.masks[k - 1]), f"{name}: the masks differ after click {k}"
    ious = [float((m & gt).sum() / max((m | gt).sum(), 1)) for m in served]
    assert ious == pytest.approx(run.ious[:made], abs=1e-12)
    assert noc(ious + [ious[-1]] * (20 - made), 0.9, 20) == noc(run.ious + [run.ious[-1]] * (20 - CLICKS), 0.9, 20)


def test_the_clicks_go_through_label_studio_percent():
    from segagent_backend.agent.types import Click

    clicks = [Click(230.0, 210.0, True), Click(0.0, 320.0, False)]
    back = label_studio_clicks(clicks, 481, 321)
    # 100 * x / width, then x * width / 100: the service's pixel, not necessarily the simulator's float
    assert back == [Click(100.0 * 230.0 / 481 * 481 / 100.0, 100.0 * 210.0 / 321 * 321 / 100.0, True),
                    Click(0.0, 320.0, False)]
