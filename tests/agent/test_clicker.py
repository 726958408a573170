"""The standard click simulator (segagent-protocol.md, section 6) on synthetic masks."""
from __future__ import annotations

import numpy as np

from segagent_backend.agent.clicker import error_distance, next_click
from segagent_backend.agent.types import Click


def _rect(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_first_click_on_empty_prediction_is_positive_at_the_distance_centre():
    gt = _rect((40, 60), 10, 21, 25, 36)  # 11 x 11 square: centre row 15, column 30
    click = next_click(gt, np.zeros_like(gt))
    assert click == Click(30.0, 15.0, True)
    wide = _rect((40, 60), 10, 21, 20, 41)  # 11 x 21: a ridge of maxima, the first (leftmost) wins
    assert next_click(wide, np.zeros_like(wide)) == Click(25.0, 15.0, True)


def test_negative_when_false_positives_dominate():
    gt = _rect((50, 50), 5, 10, 5, 10)
    pred = gt | _rect((50, 50), 20, 45, 20, 45)  # a large wrong region
    click = next_click(gt, pred)
    assert click is not None and not click.positive
    assert 20 <= click.x < 45 and 20 <= click.y < 45


def test_equal_distances_go_negative():
    gt = _rect((20, 40), 5, 10, 5, 10)  # FN 5x5
    pred = _rect((20, 40), 5, 10, 25, 30)  # FP 5x5 of the same size
    click = next_click(gt, pred)
    assert click == Click(27.0, 7.0, False)


def test_row_major_tie_breaking():
    gt = np.zeros((9, 9), bool)
    gt[1, 6] = gt[4, 2] = gt[4, 7] = True  # three single pixels, all at distance 1
    click = next_click(gt, np.zeros_like(gt))
    assert (click.x, click.y) == (6.0, 1.0)


def test_ignore_pixels_are_excluded():
    gt = _rect((30, 30), 0, 30, 0, 15)
    ignore = _rect((30, 30), 0, 30, 0, 15)
    ignore[10:20, 2:8] = False  # only a small patch of the object counts
    click = next_click(gt, np.zeros_like(gt), ignore)
    assert 2 <= click.x < 8 and 10 <= click.y < 20
    assert next_click(gt, np.zeros_like(gt), gt) is None  # all error ignored


def test_already_clicked_pixels_are_not_chosen_again():
    gt = _rect((21, 21), 0, 21, 0, 21)
    pred = np.zeros_like(gt)
    first = next_click(gt, pred)
    second = next_click(gt, pred, clicked=[first])
    assert first == Click(10.0, 10.0, True)
    assert second is not None and (second.x, second.y) != (first.x, first.y)


def test_image_border_counts_as_boundary():
    gt = np.ones((5, 9), bool)
    dist = error_distance(gt)
    assert dist[0, 4] == 1.0 and dist[2, 0] == 1.0  # border pixels are next to the padding
    assert dist[2, 4] == 3.0
    assert next_click(gt, np.zeros_like(gt)) == Click(2.0, 2.0, True)  # first of row 2 at distance 3


def test_no_error_returns_none():
    gt = _rect((10, 10), 2, 6, 2, 6)
    assert next_click(gt, gt.copy()) is None
