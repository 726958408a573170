"""The release's readers and selection, rule by rule, on hand-written answers.

Expected values are what the release's own code gives (aim-uofa/SegAgent 21eca0a), worked out from it:
``GroundingModel_Qwen_full.process_response`` (evaltools/model_loader.py ~407-420): ``Positive point``
anywhere -> positive, else ``Negative point`` must occur; ``int()`` of each comma part of the first
``\\((.*?)\\)`` match after the last ``point: ``, the first two used; pixel ``(round(a / 1000 * height),
round(b / 1000 * width))`` as (row, col), no clamp (refcocog_eval.py ~586). ``forward_single``
(evaltools/eval_result_iou.py ~36-65): ``float()`` of the text after the last ``Current IOU: `` cut at the
first ``,`` for every answer; if any fails, cut at the first ``P`` then ``N`` for every answer; if that fails
too, all 0; ``i = argmax`` (the first of equals), the mask ``pred_list[i - 1]`` for i > 0, else ``pred_list[0]``.
"""
from __future__ import annotations

import pytest

from segagent_backend.agent.loop import release_pick
from segagent_backend.agent.protocol import parse_answer, release_click, release_estimate, release_estimates
from segagent_backend.agent.types import Click


@pytest.mark.parametrize("text, expected", [
    ("<ref>a dog</ref> Current IOU: 87  Positive point: (500, 250)", (True, 500, 250)),
    ("Current IOU: 3  Negative point: ( 500 ,250 )", (False, 500, 250)),       # int() strips blanks
    ("Current IOU: 3  Positive point: (+5, -3)", (True, 5, -3)),              # signs read
    ("Current IOU: 3  Positive point: (1_0, 2)", (True, 10, 2)),              # int("1_0") == 10
    ("Current IOU: 3  Positive point: (1, 2, 3)", (True, 1, 2)),              # the first two of three parts
    ("Current IOU: 3  Positive point: (1, 2, x)", None),                     # every part must read
    ("Current IOU: 3  Positive point: (0.5, 0.25)", None),                   # int("0.5") fails
    ("Current IOU: 3  Positive point: (760)", None),                         # one part: no second number
    ("Current IOU: 3  Positive point: 760, 311", None),                      # no (...)
    ("Current IOU: 3  Positive point: (1,\n2)", None),                       # '.' stops at a newline
    ("Current IOU: 3  Positive point: 5, 6 (7, 8)", (True, 7, 8)),            # the first (...) after point:
    ("Negative point: (10, 20) then Positive point: (30, 40)", (True, 30, 40)),  # Positive anywhere wins
    ("Positive point: (1, 2) then Negative point: (3, 4)", (True, 3, 4)),     # numbers after the LAST point:
    ("Positive point:(1, 2)", (True, 1, 2)),                                 # no "point: ": the whole text
    ("<ref>x</ref> Current IOU: 50", None),                                  # no action
    ("<ref>x</ref> Current IOU: 50  Finish", None),
    ("Current IOU: 9  Positive point: (7, 8)<|im_end|><|endoftext|>", (True, 7, 8)),
])
def test_click_reader(text, expected):
    assert release_click(text) == expected


@pytest.mark.parametrize("text, x, y", [
    ("Current IOU: 87  Positive point: (500, 250)", 50.0, 50.0),     # row = round(0.5 * 100), col = round(0.25 * 200)
    ("Current IOU: 87  Positive point: (5, -3)", -1.0, 0.0),          # round(0.5) = 0, round(-0.6) = -1: no clamp
    ("Current IOU: 87  Positive point: (1000, 999)", 200.0, 100.0),   # row 100 = height, col round(199.8) = 200
    ("Current IOU: 87  Negative point: (333, 667)", 133.0, 33.0),     # round(33.3), round(133.4)
])
def test_click_pixels_are_rounded_row_col_and_not_clamped(text, x, y):
    answer = parse_answer(text, 200, 100, strict=True)  # width 200, height 100
    assert answer.click == Click(x, y, "Positive" in text) and not answer.malformed


def test_an_answer_without_a_readable_click_is_a_failure():
    for text in ("Current IOU: 87  Positive point: (0.5, 0.25)", "garbage", "Current IOU: 87  Positive point: (1)"):
        answer = parse_answer(text, 200, 100, strict=True)
        assert answer.click is None and answer.stop and answer.malformed


@pytest.mark.parametrize("texts, expected", [
    (["Current IOU: 87  Positive point: (1, 2)"], [87.0]),                    # "," form fails -> P/N form
    (["<ref>a</ref> Current IOU: 87.5  Negative point: (1, 2)"], [87.5]),     # float(): 87.5, not 0
    (["Current IOU:  7  Positive point: (1, 2)"], [7.0]),                     # float(" 7  ")
    (["Current IOU: 90, Positive point: (1, 2)", "Current IOU: 80, Negative point: (3, 4)"], [90.0, 80.0]),
    # one answer fails the "," form: ALL are read by the P/N form, where "90, " fails: all 0
    (["Current IOU: 90, Positive point: (1, 2)", "Current IOU: 80  Positive point: (1, 2)"], [0.0, 0.0]),
    (["garbage Positive point: (1, 2)", "Current IOU: 80  Positive point: (1, 2)"], [0.0, 0.0]),
    # the LAST "Current IOU: " counts
    (["Current IOU: 10  Positive point: (1, 2) Current IOU: 60"], [60.0]),
    # ... and with the release's decoded special tokens after it neither form reads it
    (["Current IOU: 10  Positive point: (1, 2) Current IOU: 60<|im_end|><|endoftext|>"], [0.0]),
    (["Current IOU: 40  Negative point: (1, 2)<|im_end|><|endoftext|>", None], [40.0, 0.0]),  # None output: 0
    (["Current IOU: 12N3  Positive point: (1, 2)"], [12.0]),                   # cut at the first N
    ([], []),
])
def test_estimates_read_together(texts, expected):
    assert release_estimates(texts) == expected


def test_one_answer_read_alone():
    assert release_estimate("Current IOU: 87  Positive point: (1, 2)") == 87.0
    assert release_estimate("Current IOU: 87.5, Positive point: (1, 2)") == 87.5
    assert release_estimate("Current IOU: high  Positive point: (1, 2)") is None
    assert parse_answer("Current IOU: 87.5  Positive point: (1, 2)", 10, 10, strict=True).iou_estimate == 0.875


def _answers(*estimates: str) -> list[str]:
    return [f"<ref>x</ref> Current IOU: {e}  Positive point: (500, 500)" for e in estimates]


@pytest.mark.parametrize("texts, clicks", [
    (_answers("0", "40", "90", "50"), 2),          # argmax 2 -> pred_list[1], the mask after click 2
    (_answers("90", "50", "20"), 1),               # argmax 0 -> pred_list[0], the mask after click 1
    (_answers("0", "80", "80", "30"), 1),          # the first of equals
    (_answers("0", "60", "high", "90"), 1),        # one unreadable: all 0 -> argmax 0
    (_answers("0", "60", "61.5", "61.4"), 2),      # decimals compared as read
    (_answers("0", "10", "20", "30", "40", "50", "99"), 6),  # the last answer's mask is never scored
    (_answers("0"), 1),                            # one click: its mask
    ([], 0),                                       # no click: no mask (the scorer drops the sample)
])
def test_selection(texts, clicks):
    assert release_pick(texts) == clicks
