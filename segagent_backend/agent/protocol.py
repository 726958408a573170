"""SegAgent's text protocol as data: the prompt, the answer grammar and the coordinate conventions.

The released SegAgent-Qwen answers ``<ref>CAPTION</ref> Current IOU: 87  Positive point: (760, 311)``:
the model's estimate (x100) of the IoU of the mask it was SHOWN, then one click whose numbers are
(row, col) integers in [0, 1000) relative to the original image. ``format_answer`` writes training
targets; ``parse_answer(format_answer(x)) == x``. Anything that is not a click means STOP. The release's
own readers (``strict``: :func:`release_click`, :func:`release_estimates`) are reproduced rule for rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

from .types import Box, Click

TASK_TEXT = (
    "Please optimize the semi-transparent green mask in a point-wise manner based on the image and "
    "description content, so that it covers the target object as accurately as possible. "
    "The object description is as follows:<ref>{caption}</ref>"
)
SYSTEM_TEXT = "You are a helpful assistant."
# Qwen-VL-Chat's hand-built ChatML prompt of the released model; {image} is a file path
QWEN_VL_CHAT_PROMPT = (
    "<|im_start|>system\n" + SYSTEM_TEXT + "<|im_end|>\n<|im_start|>user\nPicture 1: <img>{image}</img>\n"
    + TASK_TEXT + "<|im_end|>\n<|im_start|>assistant\n"
)
SEPARATOR = "  "  # between the estimate and the click, two spaces in the released outputs


@dataclass(frozen=True)
class CoordinateConvention:
    """How a click is written: ``(A, B)`` with A = row when ``row_first``; values in [0, scale).

    SegAgent-Qwen: row first, integers on 0..999 of the original image. SegAgent-LLaVA: decimals in [0, 1).
    """

    row_first: bool = True
    scale: float = 1000.0
    decimals: int = 0  # 0 = integers

    def encode(self, click: Click, width: int, height: int) -> tuple[float, float]:
        """Pixels -> the two numbers the model writes, rounded to the nearest step, within [0, scale).

        Rounding (not truncation) makes ``decode(encode(p)) == p`` for every pixel ``decode`` can yield.
        """
        step = 10.0 ** -self.decimals
        top = self.scale - step

        def number(pixel: float, size: int) -> float:
            value = round(pixel * self.scale / size, self.decimals) if self.decimals else round(pixel * self.scale / size)
            return min(max(value, 0), top)

        row, col = number(click.y, height), number(click.x, width)
        return (row, col) if self.row_first else (col, row)

    def decode(self, a: float, b: float, width: int, height: int, clamp: bool = True) -> tuple[float, float]:
        """The two numbers -> (x, y) pixels of the original image: ``round(row / scale * height)`` (the
        release's order of operations), clamped to the image unless ``clamp`` is False (the release's
        parser does not clamp; the episode engine clamps every click that enters an episode)."""
        row, col = (a, b) if self.row_first else (b, a)
        y, x = round(row / self.scale * height), round(col / self.scale * width)
        if clamp:
            y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
        return float(x), float(y)

    def text(self, value: float) -> str:
        return f"{value:.{self.decimals}f}" if self.decimals else str(int(value))

    @property
    def help(self) -> str:
        """How a click is written, in words made from the fields (the settings table's text)."""
        order = "(row, col)" if self.row_first else "(col, row)"
        top = self.text(self.scale - 10.0 ** -self.decimals)
        return f"{order} integers on 0..{top}" if not self.decimals else f"{order} decimals in [0, {self.scale:g})"


SEGAGENT_QWEN = CoordinateConvention(row_first=True, scale=1000.0, decimals=0)
SEGAGENT_LLAVA = CoordinateConvention(row_first=True, scale=1.0, decimals=3)
# SEGAGENT_COORDINATES: the one table of conventions by name
CONVENTIONS: dict[str, CoordinateConvention] = {"qwen": SEGAGENT_QWEN, "llava": SEGAGENT_LLAVA}


@dataclass(frozen=True)
class Answer:
    """One parsed answer. ``click`` None = stop (no action, or not parsable: ``malformed``)."""

    click: Optional[Click]
    iou_estimate: Optional[float]  # 0..1, the estimate of the mask the model was shown
    text: str = ""
    malformed: bool = False
    box: Optional[tuple[float, float, float, float]] = None  # Qwen's (x1, y1, x2, y2) on 0..999

    @property
    def stop(self) -> bool:
        return self.click is None


def task_text(caption: str) -> str:
    """The user text every step sends (chat-template models and Qwen-VL-Chat alike)."""
    return TASK_TEXT.format(caption=caption)


def answer_prefix(caption: str, head: Optional[str] = None) -> str:
    """The echo every answer starts with; it carries no information, so it is a forced prefix.
    ``head`` replaces ``<ref>caption</ref>`` once an answer carried a box (see :func:`answer_head`)."""
    return f"{head or f'<ref>{caption}</ref>'} Current IOU: "


def answer_head(text: str) -> str:
    """``<ref>..</ref><box>..</box>`` of an answer with a box, as the release's ``use_last_box`` re-feeds it
    (the last ``<ref>`` and the last ``<box>`` of the text)."""
    ref = text.split("<ref>")[-1].split("</ref>")[0]
    box = text.split("<box>")[-1].split("</box>")[0]
    return f"<ref>{ref}</ref><box>{box}</box>"


def box_pixels(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    """An answer's box, Qwen's (x1, y1, x2, y2) on 0..999, in pixels as the release converts it
    (``int(v / 999 * size)``), clamped to the image."""
    x1, y1, x2, y2 = (int(v / 999 * size) for v, size in zip(box, (width, height, width, height)))
    return Box(x1, y1, x2, y2).clamped(width, height)


_IOU = re.compile(r"Current IOU:\s*(-?\d+(?:\.\d+)?)")
_BOX = re.compile(r"<box>\((\d+),\s*(\d+)\),\((\d+),\s*(\d+)\)</box>")
_PAIR = re.compile(r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)")


def parse_answer(text: str, width: int, height: int, convention: CoordinateConvention = SEGAGENT_QWEN,
                 strict: bool = False) -> Answer:
    """The released parser's rules: positive if ``Positive point`` occurs, else negative if ``Negative
    point`` occurs, else stop; the numbers are the first ``(A, B)`` after the last ``point:``.

    ``strict`` (the ``release`` protocol) is the release's parser exactly (:func:`_parse_release`): the
    click by :func:`release_click` (Python's ``int()``; pixels not clamped), the estimate by
    :func:`release_estimate` (``float()`` after the LAST ``Current IOU: ``); an answer without a readable
    click ends the episode. Which mask the release returns depends on the estimates of ALL its answers
    that made a click, read together (:func:`release_estimates`), not on ``Answer.iou_estimate``.
    """
    if strict:
        return _parse_release(text, width, height, convention)
    iou_match = _IOU.search(text)
    iou = min(max(float(iou_match.group(1)), 0.0), 100.0) / 100.0 if iou_match else None
    box_match = _BOX.search(text)
    box = tuple(float(v) for v in box_match.groups()) if box_match else None
    if "Positive point" in text:
        positive = True
    elif "Negative point" in text:
        positive = False
    else:
        return Answer(None, iou, text, malformed=iou_match is None, box=box)
    pair = _PAIR.search(text.rsplit("point:", 1)[-1])
    if pair is None:
        return Answer(None, iou, text, malformed=True, box=box)
    x, y = convention.decode(float(pair.group(1)), float(pair.group(2)), width, height)
    return Answer(Click(x, y, positive), iou, text, box=box)


# the release's click reader: the first ``(...)`` (no newline inside) after the last ``point: ``
_RELEASE_PARENS = re.compile(r"\((.*?)\)")
RELEASE_IOU = "Current IOU: "


def release_click(text: str) -> Optional[tuple[bool, int, int]]:
    """The release's click reader (``process_response`` of its Qwen grounding model): positive if
    ``Positive point`` occurs anywhere, else negative if ``Negative point`` does, else nothing; then the
    first ``(...)`` of the text after the LAST ``point: ``, ``int()`` of EVERY comma part (Python's own
    rules: " 311" and "+5" read, "3.5" does not), the first two used. (positive, A, B) or None (a failure)."""
    if "Positive point" in text:
        positive = True
    elif "Negative point" in text:
        positive = False
    else:
        return None
    found = _RELEASE_PARENS.findall(text.split("point: ")[-1])
    if not found:
        return None
    try:
        numbers = [int(part) for part in found[0].split(",")]
    except ValueError:
        return None
    if len(numbers) < 2:
        return None
    return positive, numbers[0], numbers[1]


def _release_estimate(text: Optional[str], second_form: bool) -> float:
    """One answer's ``Current IOU`` as the release's scorer reads it (x100; None text = 0): ``float()`` of
    the text after the LAST ``Current IOU: ``, cut at the first ``,`` (first form) or at the first ``P``
    then the first ``N`` (second form). ValueError when ``float()`` refuses it."""
    if text is None:
        return 0.0
    tail = text.split(RELEASE_IOU)[-1]
    return float(tail.split("P")[0].split("N")[0] if second_form else tail.split(",")[0])


def release_estimates(texts: Sequence[Optional[str]]) -> list[float]:
    """The estimates (x100) of a list of answers as the release's scorer reads them (``eval_result_iou.py``):
    the first form for ALL answers; if any fails, the second form for all; if that fails too, all 0."""
    for second_form in (False, True):
        try:
            return [_release_estimate(t, second_form) for t in texts]
        except ValueError:
            continue
    return [0.0] * len(texts)


def release_estimate(text: str) -> Optional[float]:
    """One answer's estimate (x100) read alone (the first form, else the second), None when unreadable."""
    for second_form in (False, True):
        try:
            return _release_estimate(text, second_form)
        except ValueError:
            continue
    return None


def _parse_release(text: str, width: int, height: int, convention: CoordinateConvention) -> Answer:
    """The released evaluation code's parser (:func:`release_click`, :func:`release_estimate`); pixels
    ``(round(A / 1000 * height), round(B / 1000 * width))`` as (row, col), NOT clamped (as the release);
    anything without a readable click ends the episode."""
    value = release_estimate(text) if RELEASE_IOU in text else None
    iou = None if value is None or value != value else min(max(value, 0.0), 100.0) / 100.0  # NaN: unreadable
    box_match = _BOX.search(text)
    box = tuple(float(v) for v in box_match.groups()) if box_match else None
    read = release_click(text)
    if read is None:
        no_action = "Positive point" not in text and "Negative point" not in text
        return Answer(None, iou, text, malformed=not (no_action and iou is not None), box=box)
    positive, a, b = read
    x, y = convention.decode(float(a), float(b), width, height, clamp=False)
    return Answer(Click(x, y, positive), iou, text, box=box)


def format_answer(caption: str, iou_estimate: float, click: Optional[Click], width: int, height: int,
                  convention: CoordinateConvention = SEGAGENT_QWEN) -> str:
    """The target text for one step: estimate (0..1 -> integer 0..100) and click (None: estimate only)."""
    text = answer_prefix(caption) + str(int(round(100 * min(max(iou_estimate, 0.0), 1.0))))
    if click is None:
        return text
    a, b = convention.encode(click, width, height)
    kind = "Positive" if click.positive else "Negative"
    return f"{text}{SEPARATOR}{kind} point: ({convention.text(a)}, {convention.text(b)})"
