"""Mask refinement: an episode that starts from a given mask (the tool's state made from it), then clicks."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pytest

from segagent_backend.agent.engine import Episode, EpisodeRequest
from segagent_backend.agent.episode import StepCache, run_given_clicks, run_given_clicks_stepwise
from segagent_backend.agent.loop import LoopConfig, run_episodes
from segagent_backend.agent.metrics import iou
from segagent_backend.agent.overlay import overlay_mask
from segagent_backend.agent.policies.base import Observation, Policy
from segagent_backend.agent.policies.simulator import SimulatorPolicy
from segagent_backend.agent.protocol import Answer
from segagent_backend.agent.segmenters.grabcut import GrabCutSegmenter
from segagent_backend.agent.types import Click

from tests.conftest import make_disk_image

# the disk: centre (80, 60), radius 30, on a 160x120 image
IMAGE, TRUTH = make_disk_image()


def shifted(mask: np.ndarray, dx: int) -> np.ndarray:
    """``mask`` moved ``dx`` pixels to the right (columns shifted in are empty)."""
    out = np.zeros_like(mask)
    if dx >= 0:
        out[:, dx:] = mask[:, : mask.shape[1] - dx]
    else:
        out[:, :dx] = mask[:, -dx:]
    return out


def eroded(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: TRUTH.shape[0], : TRUTH.shape[1]]
    return (xx - 80) ** 2 + (yy - 60) ** 2 <= radius**2


class Scripted(Policy):
    """Answers from a script, one (estimate, click) per call; records what it was shown."""

    def __init__(self, script: Sequence[tuple[Optional[float], Optional[Click]]]):
        super().__init__()
        self.script, self.seen = list(script), []

    def propose(self, observations: Sequence[Observation], k: int = 1):
        self.seen.append(list(observations))
        estimate, click = self.script[len(self.seen) - 1]
        return [[Answer(click, estimate)] * k for _ in observations]


def test_root_state_is_the_start_mask_with_the_tools_state():
    start = shifted(TRUTH, 12)
    episode = Episode(GrabCutSegmenter(), EpisodeRequest(IMAGE, mask=start))
    assert np.array_equal(episode.state.mask, start) and episode.state.clicks == ()
    assert episode.state.logits is not None and episode.state.logits.any()
    assert np.array_equal(Episode(GrabCutSegmenter(), EpisodeRequest(IMAGE)).state.mask, np.zeros_like(start))


def test_start_mask_of_another_size_is_refused():
    with pytest.raises(ValueError, match="start mask"):
        Episode(GrabCutSegmenter(), EpisodeRequest(IMAGE, mask=np.zeros((10, 10), bool)))


def test_policy_sees_the_start_mask_and_a_positive_click_improves_it():
    start = shifted(TRUTH, 12)  # misses the disk's left side
    policy = Scripted([(0.4, Click(56, 60)), (0.9, None)])
    result = run_episodes(policy, GrabCutSegmenter(), [EpisodeRequest(IMAGE, "the red disk", mask=start)],
                          LoopConfig(max_steps=3))[0]
    first = policy.seen[0][0]
    assert first.step == 0 and np.array_equal(first.mask, start)
    assert np.array_equal(first.overlay, overlay_mask(IMAGE, start))  # painted on the image
    assert (first.overlay[start] != IMAGE[start]).any() and np.array_equal(first.overlay[~start], IMAGE[~start])
    assert [s.click for s in result.trajectory] == [Click(56, 60)]
    assert iou(result.mask, TRUTH) > iou(start, TRUTH) + 0.1


def test_a_negative_click_alone_removes_the_wrong_part():
    start = shifted(TRUTH, 14)  # spills over the disk's right side
    out = run_given_clicks(_set(GrabCutSegmenter()), [Click(120, 60, False)], mask=start)
    assert not out.mask[60, 120]
    assert iou(out.mask, TRUTH) > iou(start, TRUTH) + 0.05
    assert out.mask[TRUTH & start].mean() > 0.9  # the start mask's right part stays: a negative click only removes


def test_an_eroded_mask_grows_to_the_object():
    start = eroded(18)  # a click 7 px outside it adds the object around the click (GrabCut's local rule)
    out = run_given_clicks(_set(GrabCutSegmenter()), [Click(80, 35)], mask=start)
    assert iou(out.mask, TRUTH) > iou(start, TRUTH) + 0.1
    assert (out.mask & ~TRUTH).sum() <= 0.01 * TRUTH.sum() and (out.mask & start).sum() == start.sum()


def test_simulator_refines_from_the_start_mask():
    start = shifted(TRUTH, 12)
    tool = GrabCutSegmenter()
    episode = Episode(tool, EpisodeRequest(IMAGE, mask=start, gt=TRUTH))
    click = SimulatorPolicy().propose([episode.observe(episode.state, 0)])[0][0].click
    x, y = int(click.x), int(click.y)
    assert start[y, x] != TRUTH[y, x] and click.positive == TRUTH[y, x]  # on an error of the start mask
    after = episode.act(episode.state, click)
    assert iou(after.mask, TRUTH) > iou(start, TRUTH)


def test_given_clicks_continue_from_the_start_mask_and_the_step_cache_tells_them_apart():
    start = shifted(TRUTH, 12)
    tool = _set(GrabCutSegmenter())
    cache = StepCache()
    clicks = [Click(56, 60)]
    plain = run_given_clicks(tool, clicks, cache=cache)
    refined = run_given_clicks(tool, clicks, cache=cache, mask=start)
    assert not np.array_equal(plain.mask, refined.mask)
    assert np.array_equal(refined.mask, run_given_clicks(_set(GrabCutSegmenter()), clicks, mask=start).mask)
    stepwise = run_given_clicks_stepwise(GrabCutSegmenter(), IMAGE, clicks, cache=StepCache(), mask=start)
    assert np.array_equal(stepwise.mask, refined.mask) and stepwise.score == refined.score
    alone = run_given_clicks_stepwise(GrabCutSegmenter(), IMAGE, [], mask=start)
    assert np.array_equal(alone.mask, start) and alone.trajectory == []


def test_grabcut_keeps_the_start_mask_in_its_state_for_later_clicks():
    start = shifted(TRUTH, 14)
    tool = _set(GrabCutSegmenter())
    prior = tool.mask_prior(start)
    first = tool.segment([Click(120, 60, False)], prev_logits=prior)
    second = tool.segment([Click(120, 60, False), Click(116, 40, False)], prev_logits=first.logits)
    assert (first.logits & 2).any() and (second.logits & 2).any()  # the start mask travels with the state
    assert second.mask.sum() > 0.5 * TRUTH.sum()  # negative clicks alone never wipe the object


def test_an_empty_start_mask_starts_from_nothing():
    episode = Episode(GrabCutSegmenter(), EpisodeRequest(IMAGE, mask=np.zeros_like(TRUTH)))
    assert not episode.state.mask.any() and episode.state.logits is None
    assert iou(episode.act(episode.state, Click(80, 60)).mask, TRUTH) > 0.85


def _set(tool):
    tool.set_image(IMAGE)
    return tool


# ---- SAM: the start mask becomes mask_input ------------------------------------------------------------

@pytest.fixture(scope="module")
def sam(tiny_sam_checkpoint):
    try:
        from tests.tiny_models import import_segment_anything

        import_segment_anything()
        from segagent_backend.agent.segmenters.sam import SamSegmenter
    except ImportError as exc:
        pytest.skip(f"segment_anything cannot be imported: {exc}")
    return SamSegmenter.from_checkpoint(tiny_sam_checkpoint, device="cpu")


def test_sam_mask_prior_is_low_res_logits_in_the_padded_input_frame(sam):
    import torch

    sam.set_image(IMAGE)
    prior = sam.mask_prior(TRUTH)
    assert prior.shape == (1, 256, 256) and prior.dtype == np.float32
    assert prior.max() == pytest.approx(10.0) and prior.min() == pytest.approx(-10.0)
    # the 160x120 image fills the top 1024x768 of the 1024x1024 input: the low-res rows below 192 are padding
    assert (prior[0, 200:] < 0).all()
    # SAM's own upscaling of these logits gives the mask back
    with torch.inference_mode():
        back = sam._upscale(sam._embedding, torch.from_numpy(prior)[None])
    assert back.shape == TRUTH.shape and iou(back, TRUTH) > 0.95


def test_sam_first_click_gets_the_start_mask_as_mask_input(sam, monkeypatch):
    import torch

    start = shifted(TRUTH, 12)
    episode = Episode(sam, EpisodeRequest(IMAGE, mask=start))
    assert np.array_equal(episode.state.mask, start)
    seen = []
    decode = sam._decode

    def spy(emb, xy, labels, xyxy, prev):
        seen.append(prev)
        return decode(emb, xy, labels, xyxy, prev)

    monkeypatch.setattr(sam, "_decode", spy)
    after = episode.act(episode.state, Click(56, 60))
    assert np.array_equal(seen[0], sam.mask_prior(start))
    # the same as segment_anything's predictor given that mask_input
    with torch.inference_mode():
        masks, scores, _ = sam.predictor.predict(np.array([[56.0, 60.0]]), np.array([1]),
                                                 mask_input=sam.mask_prior(start), multimask_output=True)
    assert np.array_equal(after.mask, masks[int(np.argmax(scores))])
