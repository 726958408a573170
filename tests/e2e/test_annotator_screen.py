"""The annotator's screen: Label Studio 1.23's own labeling screen in a real browser, as the README says to use it.

Debian's chromium, driven by Playwright (``executable_path``: browsers cannot be downloaded here), against the
suite's hermetic Label Studio and the GrabCut backend, whose key is a personal access token. The project uses the README's label config, its tasks
are JSON with the image URL and ``expression``; on the labeling screen Auto-Annotation goes on and the smart
tools come from the Auto-Detect flyout. Masks are checked from what Label Studio stored, against the image's
ground truth. Every request that leaves 127.0.0.1 is aborted. Screenshots go to the test's temporary folder,
and also to ``SEGAGENT_SCREENSHOTS`` when set (``scripts/make-readme-screens`` draws the README's pictures).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle

from servers import REPO, log_tail, serve_backend, stop

CHROMIUM = "/usr/bin/chromium"
# the flags a headless Chromium needs on a machine without a network (no background calls home)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
IMAGE = "/data/local-files/?d=images/disk.png"  # conftest's files_root: the 160x120 red disk
W, H = 160, 120
CENTRE, EDGE = (80, 60), (102, 60)  # the disk: centre (80, 60), radius 30
# the README's config, in order: BrushLabels "mask", smart KeyPointLabels "click", smart RectangleLabels "box",
# KeyPointLabels "trajectory": the labels show in that order under the image
CLICK_LABEL, BOX_LABEL = 1, 2


def readme_label_config() -> str:
    """The XML of the README's *Connect Label Studio* step 1."""
    section = (REPO / "README.md").read_text().split("## Connect Label Studio", 1)[1]
    return re.search(r"```xml\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}: `make test` installs Debian's chromium (scripts/ensure-chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def backend_server(label_studio, pat, tmp_path_factory):
    """The GrabCut backend with a personal access token as its key (what Label Studio 1.23 issues by default)."""
    url, proc = serve_backend((label_studio[0], pat), tmp_path_factory.mktemp("models"))
    yield url, proc
    stop(proc)


@pytest.fixture(scope="module")
def screen_project(label_studio, backend, files_root):
    """The README's project: its label config, local files, JSON tasks, the backend connected interactively."""
    url, token = label_studio
    ls = LabelStudio(base_url=url, api_key=token)
    project = ls.projects.create(title="annotator screen", label_config=readme_label_config())
    ls.import_storage.local.create(project=project.id, path=str(files_root / "images"), use_blob_urls=True)
    ml = ls.ml.create(url=backend, project=project.id, is_interactive=True, title="segagent")
    assert ls.ml.get(id=ml.id).state == "CO"
    return ls, project


def new_task(ls, project) -> int:
    """One task imported as the README says: JSON with the image URL and the expression."""
    reply = ls.projects.import_tasks(id=project.id, request=[{"image": IMAGE, "expression": "the red disk"}],
                                     return_task_ids=True)
    return reply.task_ids[0]


class Screen:
    """One annotator's labeling screen (a logged-in browser page)."""

    def __init__(self, browser, label_studio, shots: Path):
        self.base, self.shots = label_studio[0], shots
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.set_default_timeout(90_000)  # two shared cores: the first load takes a while
        self.page.route("**/*", self._loopback_only)
        self.page.goto(f"{self.base}/user/login")
        self.page.fill("input[name=email]", "e2e@example.com")
        self.page.fill("input[name=password]", "e2e-password")
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("networkidle")

    @staticmethod
    def _loopback_only(route):
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    def open(self, project: int, task: int) -> None:
        self.page.goto(f"{self.base}/projects/{project}/data?task={task}", wait_until="commit")
        self.page.wait_for_selector("canvas")
        self.page.wait_for_timeout(1000)

    def toggle(self, name: str, on: bool) -> None:
        """Auto-Annotation (``auto-annotation``) or Auto-Accept Suggestions (``auto-accept``)."""
        switch = self.page.locator(f"[data-testid=bottombar-{name}-toggle]")
        if switch.is_checked() != on:
            switch.locator("xpath=..").click()
        assert switch.is_checked() == on

    def smart_tool(self, tool: str, label: int) -> None:
        """The label, then the smart ``tool`` from the Auto-Detect flyout (the wand): choosing the label alone
        selects the plain tool, and Label Studio deselects the label after each click."""
        self.page.get_by_text("Object", exact=True).nth(label).click()
        self.page.locator("button.lsf-tool_smart:visible").first.hover()
        self.page.locator(f"button.lsf-tool_smart[aria-label={tool}]").first.click()

    def _at(self, x: float, y: float) -> dict:
        box = self.page.locator("canvas").nth(1).bounding_box()
        return {"x": box["width"] * x / W, "y": box["height"] * y / H}

    def _answer(self):
        """Label Studio's answer to the screen's next interactive call that carries a prompt."""
        return self.page.expect_response(
            lambda r: "interactive-annotating" in r.url and '"result":[{' in (r.request.post_data or ""))

    def click(self, x: float, y: float, negative: bool = False) -> dict:
        """A smart click at image pixel (x, y); negative: Ctrl+Alt+click, Label Studio's modifier for a negative
        click that may land on a region. Returns what Label Studio answered the screen."""
        self.smart_tool("key-point-tool", CLICK_LABEL)
        with self._answer() as answer:
            self.page.click("canvas >> nth=1", position=self._at(x, y), force=True,
                            modifiers=["Control", "Alt"] if negative else [])
        self.page.wait_for_timeout(1500)  # the editor draws (and, with Auto-Accept, accepts) the suggestion
        return answer.value.json()

    def box(self, x1: float, y1: float, x2: float, y2: float) -> dict:
        self.smart_tool("rectangle-tool", BOX_LABEL)
        canvas = self.page.locator("canvas").nth(1).bounding_box()
        start, end = self._at(x1, y1), self._at(x2, y2)
        with self._answer() as answer:
            self.page.mouse.move(canvas["x"] + start["x"], canvas["y"] + start["y"])
            self.page.mouse.down()
            self.page.mouse.move(canvas["x"] + end["x"], canvas["y"] + end["y"], steps=8)
            self.page.mouse.up()
        self.page.wait_for_timeout(1500)
        return answer.value.json()

    def accept_suggestions(self) -> None:
        self.page.locator("[data-testid=bottombar-accept-suggestions-button]").click()
        self.page.wait_for_timeout(500)

    def submit(self) -> None:
        self.page.locator("[data-testid=bottombar-submit-button]").click()
        self.page.wait_for_timeout(2000)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=self.shots / f"{name}.png")
        readme = os.environ.get("SEGAGENT_SCREENSHOTS")
        if readme:
            shutil.copy(self.shots / f"{name}.png", Path(readme) / f"screen-{name}.png")


@pytest.fixture
def screen(browser, label_studio, tmp_path):
    screen = Screen(browser, label_studio, tmp_path)
    yield screen
    screen.page.close()


def stored(ls, task: int) -> list[dict]:
    """The regions of the task's one submitted annotation."""
    (annotation,) = list(ls.annotations.list(id=task))
    return annotation.result


def brush_masks(result: list[dict]) -> list[np.ndarray]:
    return [decode_rle(r["value"]["rle"]).reshape(H, W, 4)[:, :, 3] > 0 for r in result if r["type"] == "brushlabels"]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_a_positive_then_a_negative_click_give_one_region_whatever_auto_accept(screen, screen_project, disk_image):
    ls, project = screen_project
    masks = {}
    for auto_accept in (False, True):
        task = new_task(ls, project)
        screen.open(project.id, task)
        screen.toggle("auto-annotation", True)
        screen.toggle("auto-accept", auto_accept)
        first = screen.click(*CENTRE)
        assert "errors" not in first, first
        second = screen.click(*EDGE, negative=True)  # over the (accepted) mask
        assert "errors" not in second, second
        screen.shot(f"refine-auto-accept-{'on' if auto_accept else 'off'}")
        if not auto_accept:
            screen.accept_suggestions()
        screen.submit()
        result = stored(ls, task)
        (mask,) = brush_masks(result)  # one brush region, not one per click
        assert not [r for r in result if r["from_name"] == "click"], "a smart keypoint stayed in the annotation"
        assert not mask[EDGE[1], EDGE[0]] and mask[CENTRE[1], CENTRE[0]]
        assert iou(mask, disk_image[1]) > 0.7
        masks[auto_accept] = mask
    assert np.array_equal(masks[False], masks[True])


def test_a_smart_box_segments_the_object(screen, screen_project, disk_image):
    ls, project = screen_project
    task = new_task(ls, project)
    screen.open(project.id, task)
    screen.toggle("auto-annotation", True)
    screen.toggle("auto-accept", True)
    answer = screen.box(46, 26, 114, 94)
    assert "errors" not in answer, answer
    screen.shot("smart-box")
    screen.submit()
    (mask,) = brush_masks(stored(ls, task))
    assert iou(mask, disk_image[1]) > 0.85


def test_a_failed_click_has_its_reason_in_the_backends_log(screen, screen_project, backend_process):
    """Label Studio shows the screen only "422 Client Error"; the backend's log names the reason and the task."""
    ls, project = screen_project
    task = new_task(ls, project)
    screen.open(project.id, task)
    screen.toggle("auto-annotation", True)
    answer = screen.click(*EDGE, negative=True)  # a negative click alone: nothing to segment
    assert "422" in " ".join(answer.get("errors", [])), answer
    assert re.search(rf"POST /predict 422 request_id=\S+ task_id={task}: the mask is empty", log_tail(backend_process))


def test_retrieve_predictions_with_and_without_a_model(screen, screen_project, label_studio, files_root, tmp_path,
                                                      tiny_sam3_text, backend_process):
    """Data Manager -> Actions -> Retrieve Predictions: without a model that can predict nothing is stored (and the
    log says why); with SAM 3 text the task gets its mask."""
    ls, project = screen_project
    task = new_task(ls, project)
    retrieve_predictions(screen, project.id)
    assert list(ls.predictions.list(task=task)) == []
    assert re.search(rf"POST /predict 501 .*task_id=.*{task}", log_tail(backend_process))

    url, proc = serve_backend(label_studio, tmp_path / "models", SEGAGENT_TEXT_MODEL=str(tiny_sam3_text),
                              SEGAGENT_TEXT_THRESHOLD="0")
    try:
        text_project = ls.projects.create(title="annotator screen, SAM 3 text", label_config=readme_label_config())
        ls.import_storage.local.create(project=text_project.id, path=str(files_root / "images"), use_blob_urls=True)
        ls.ml.create(url=url, project=text_project.id, is_interactive=True, title="segagent sam3")
        text_task = new_task(ls, text_project)
        retrieve_predictions(screen, text_project.id)
        (prediction,) = list(ls.predictions.list(task=text_task))
        assert [r["type"] for r in prediction.result] == ["brushlabels"]
    finally:
        stop(proc)


def retrieve_predictions(screen: Screen, project: int) -> None:
    page = screen.page
    page.goto(f"{screen.base}/projects/{project}/data", wait_until="commit")
    page.get_by_label("Select all rows").check()
    page.get_by_role("button", name=re.compile("Actions")).click()
    page.get_by_text("Retrieve Predictions").click()
    page.get_by_text("Please confirm your action").wait_for()
    with page.expect_response(lambda r: "/api/dm/actions" in r.url and r.request.method == "POST"):
        page.locator("button:visible", has_text=re.compile(r"^\s*OK\s*$")).last.click()  # the confirmation
    page.wait_for_timeout(1000)
