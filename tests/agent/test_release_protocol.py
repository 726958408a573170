"""The paper's protocol as a preset: the release's selection and stop rules, strict parser, overlay arithmetic.

The release's rule-by-rule cases (hand-written answers, expected values from its code) are in
tests/agent/test_release_rules.py."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pytest

from segagent_backend.agent.loop import EpisodeRequest, LoopConfig, release_choice, run_episodes
from segagent_backend.agent.overlay import overlay_mask
from segagent_backend.agent.policies.base import Observation, Policy
from segagent_backend.agent.protocol import Answer, parse_answer
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Box, Click

from tests.conftest import make_disk_image


@pytest.mark.parametrize("estimates, clicks, expected", [
    ([0.0, 0.5, 0.9, 0.7], 4, 2),        # argmax i > 0: the mask after click i
    ([0.9, 0.5, 0.2], 3, 1),             # argmax 0: the mask after the first click
    ([0.0, 0.8, 0.8, 0.3], 4, 1),        # the first of equals
    ([0.0, 0.6, None, 0.9], 4, 1),       # one unreadable estimate makes them all 0 -> argmax 0
    ([0.0], 0, 0),                       # no click was ever made: the start mask
])
def test_release_choice_on_hand_made_estimates(estimates, clicks, expected):
    assert release_choice(estimates, clicks) == expected


class Scripted(Policy):
    """Answers from a script: one (estimate, click) pair per call and episode; None click = stop. Each answer
    carries the text the released model would write for it (the release selects by the texts)."""

    def __init__(self, script: Sequence[tuple[Optional[float], Optional[Click]]]):
        super().__init__()
        self.script, self.calls, self.release_flags = list(script), 0, []

    def propose(self, observations: Sequence[Observation], k: int = 1):
        estimate, click = self.script[self.calls]
        self.calls += 1
        self.release_flags += [o.release for o in observations]
        text = f"<ref>the red disk</ref> Current IOU: {round(100 * estimate)}"
        if click is not None:
            text += f"  {'Positive' if click.positive else 'Negative'} point: (1, 1)"
        return [[Answer(click, estimate, text)] * k for _ in observations]


def run(script, max_steps=7):
    image, _ = make_disk_image()
    policy = Scripted(script)
    result = run_episodes(policy, GrabCutSegmenter(), [EpisodeRequest(image, "the red disk")],
                          LoopConfig(max_steps=max_steps, protocol="release", stop_iou=0.5, patience=1))[0]
    return policy, result


def test_release_makes_max_steps_calls_without_early_stop():
    clicks = [Click(80 + d, 60, True) for d in range(7)]
    # estimates that would stop the extended loop at once (stop_iou 0.5, patience 1)
    policy, result = run([(0.99, c) for c in clicks])
    assert policy.calls == 7 and set(policy.release_flags) == {True}
    assert result.stop_reason == "max steps"
    assert len(result.trajectory) == 1  # all equal: the first argmax (0) returns the mask after click 1


def test_release_returns_the_mask_after_the_argmax_click():
    clicks = [Click(80, 60, True), Click(10, 10, False), Click(100, 60, True), Click(5, 100, False)]
    policy, result = run([(0.0, clicks[0]), (0.4, clicks[1]), (0.9, clicks[2]), (0.5, clicks[3])], max_steps=4)
    assert [s.click for s in result.trajectory] == clicks[:2] and result.score == pytest.approx(0.9)


def test_one_call_returns_the_mask_after_its_click():
    # the release's mask_list[0] (the mask after click 1) answers argmax 0, also when it made one call
    policy, result = run([(0.3, Click(80, 60, True))], max_steps=1)
    assert policy.calls == 1 and [s.click for s in result.trajectory] == [Click(80, 60, True)]
    assert result.mask.any() and result.score == pytest.approx(0.3)


def test_an_unreadable_answer_ends_the_release_episode_and_is_not_scored():
    policy, result = run([(0.0, Click(80, 60, True)), (0.7, Click(90, 60, True)), (0.8, None)])
    assert policy.calls == 3 and result.stop_reason == "policy stopped"
    # the release's pred_list holds the two answers that clicked: estimates [0, 70] -> argmax 1 -> the mask
    # after click 1 (the last answer's 80 made no click, so the release never scores it)
    assert len(result.trajectory) == 1 and result.score == pytest.approx(0.7)


def test_the_issue_audit_case_picks_the_mask_after_two_clicks():
    # estimates 0, 60, 80 with clicks, then 95 without one: ours used to pick the mask after 3 clicks
    clicks = [Click(80, 60, True), Click(90, 60, True), Click(70, 60, True)]
    policy, result = run([(0.0, clicks[0]), (0.6, clicks[1]), (0.8, clicks[2]), (0.95, None)])
    assert policy.calls == 4 and [s.click for s in result.trajectory] == clicks[:2]


def test_a_failure_at_the_first_step_returns_the_start_without_a_click():
    policy, result = run([(0.5, None)])
    assert policy.calls == 1 and result.trajectory == [] and not result.mask.any()


def test_strict_parser_reads_what_int_reads_and_stops_on_the_rest():
    ok = parse_answer("<ref>x</ref> Current IOU: 87  Positive point: (500, 250)", 200, 100, strict=True)
    assert ok.click == Click(50.0, 50.0, True) and ok.iou_estimate == pytest.approx(0.87)
    spaced = parse_answer("<ref>x</ref> Current IOU: 3  Negative point: ( 500 ,250 )", 200, 100, strict=True)
    assert spaced.click == Click(50.0, 50.0, False)  # int() strips blanks
    decimals = parse_answer("<ref>x</ref> Current IOU: 87  Positive point: (0.5, 0.25)", 200, 100, strict=True)
    assert decimals.click is None and decimals.malformed
    assert parse_answer("<ref>x</ref> Current IOU: 87  Positive point: (0.5, 0.25)", 200, 100).click is not None
    decimal_iou = parse_answer("<ref>x</ref> Current IOU: 8.5  Positive point: (5, 5)", 200, 100, strict=True)
    assert decimal_iou.iou_estimate == pytest.approx(0.085) and decimal_iou.click is not None  # float(), as the release
    bad_iou = parse_answer("<ref>x</ref> Current IOU: high  Positive point: (5, 5)", 200, 100, strict=True)
    assert bad_iou.iou_estimate is None and bad_iou.click is not None


def test_release_overlay_truncates_the_blend():
    image = np.array([[[11, 200, 3], [0, 0, 0]]], np.uint8)
    mask = np.array([[True, False]])
    truncated = overlay_mask(image, mask, truncate=True)
    assert truncated[0, 0].tolist() == [5, 227, 1]  # floor((v + c) / 2), c = (0, 255, 0)
    assert truncated[0, 1].tolist() == [0, 0, 0]
    assert overlay_mask(image, mask)[0, 0].tolist() != [5, 227, 1]  # the extended overlay rounds


class BoxAnswers(Policy):
    """A release-style box model: the first answer carries a box, later ones only clicks; records what it saw."""

    def __init__(self):
        super().__init__()
        self.heads = []

    def propose(self, observations: Sequence[Observation], k: int = 1):
        out = []
        for o in observations:
            self.heads.append(o.answer_head)
            x = 60.0 + 10 * o.step
            if o.step == 0:
                text = "<ref>the red disk</ref><box>(312,250),(687,749)</box> Positive point: (500, 500)"
                out.append([Answer(Click(x, 60.0, True), None, text, box=(312.0, 250.0, 687.0, 749.0))] * k)
            else:
                out.append([Answer(Click(x, 60.0, True), 0.5, "Current IOU: 50  Positive point: (1, 1)")] * k)
        return out


class RecordingTool(GrabCutSegmenter):
    def __init__(self):
        super().__init__()
        self.boxes = []

    def segment(self, clicks, box=None, prev_logits=None):
        self.boxes.append(box)
        return super().segment(clicks, box, prev_logits)


def test_a_box_answer_prompts_the_tool_and_is_re_fed_to_the_policy():
    image, _ = make_disk_image()  # 160 x 120
    policy, tool = BoxAnswers(), RecordingTool()
    result = run_episodes(policy, tool, [EpisodeRequest(image, "the red disk")],
                          LoopConfig(max_steps=3, protocol="release"))[0]
    expected = Box(int(312 / 999 * 160), int(250 / 999 * 120), int(687 / 999 * 160), int(749 / 999 * 120))
    assert tool.boxes and all(b == expected for b in tool.boxes)  # in that call and every later one
    assert policy.heads[0] is None
    assert policy.heads[1:] == ["<ref>the red disk</ref><box>(312,250),(687,749)</box>"] * (len(policy.heads) - 1)
    assert result.box == expected


def test_the_re_fed_head_replaces_the_caption_in_the_forced_prefix():
    from segagent_backend.agent.protocol import answer_prefix

    head = "<ref>a dog</ref><box>(1,2),(3,4)</box>"
    assert answer_prefix("a dog") == "<ref>a dog</ref> Current IOU: "
    assert answer_prefix("a dog", head) == head + " Current IOU: "
