"""IoU, NoC, cIoU and gIoU (segagent-protocol.md, section 8)."""
from __future__ import annotations

import numpy as np
import pytest

from segagent_backend.agent.metrics import ciou, giou, intersection_union, iou, mean_noc, noc


def test_iou_basic_and_ignore():
    gt = np.zeros((4, 4), bool)
    gt[:2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[1:3] = True  # 8 px, 4 shared
    assert iou(pred, gt) == pytest.approx(4 / 12)
    ignore = np.zeros((4, 4), bool)
    ignore[2] = True  # drops the 4 false positives of row 2
    assert iou(pred, gt, ignore) == pytest.approx(4 / 8)
    assert intersection_union(pred, gt, ignore) == (4, 8)


def test_iou_empty_union_is_one():
    empty = np.zeros((3, 3), bool)
    assert iou(empty, empty) == 1.0


def test_noc():
    ious = [0.5, 0.8, 0.86, 0.91, 0.95]
    assert noc(ious, 0.85) == 3
    assert noc(ious, 0.90) == 4
    assert noc(ious, 0.99, max_clicks=20) == 20
    assert noc([0.95] * 30, 0.9, max_clicks=20) == 1
    assert noc([0.1] * 19 + [0.95], 0.9, max_clicks=5) == 5  # only the first max_clicks count
    assert mean_noc([ious, [0.9]], 0.9) == pytest.approx((4 + 1) / 2)


def test_ciou_and_giou():
    assert ciou([1, 3], [2, 6]) == pytest.approx(0.5)
    assert ciou([0, 0], [0, 0]) == 1.0
    assert giou([0.5, 1.0]) == pytest.approx(0.75)
