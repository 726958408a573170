"""Label Studio /predict: tasks -> episode requests -> mask (brush, polygon) and trajectory regions, one answer
per task.

A task that cannot be predicted gets a per-task error (``task_error``: ``{"error", "status",
"model_version"}`` and NO ``result`` key), so Label Studio skips it instead of storing an empty prediction.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..agent.loop import EpisodeRequest
from ..agent.types import EpisodeResult
from ..errors import NO_POLICY, RequestError
from ..media import MediaLoader, MediaSource
from .config import LabelConfig
from .context import Prompt, check_claimed_size
from .request import PredictRequest
from .sessions import Continued, MemorySessions, SessionStore, continue_object, remember
from .sources import ProjectSources, project_id
from .tasks import expression, image_url, task_id

if TYPE_CHECKING:
    from ..model_host import ModelHost

log = logging.getLogger(__name__)

# the per-task answer (status 422) of an episode that ended with an empty mask: no empty region is stored
EMPTY_MASK = "the mask is empty (nothing was segmented): no prediction for this task"


def task_error(message: str, status: int, model_version: str) -> dict:
    """A per-task error: no ``result`` key, so Label Studio stores no empty prediction."""
    return {"error": message, "status": status, "model_version": model_version}


class Predictions:
    """Label Studio predictions made with one process's ``ModelHost``."""

    def __init__(self, host: "ModelHost", media: MediaLoader, sources: ProjectSources,
                 sessions: Optional[SessionStore] = None):
        """``sessions``: which object each task's clicks refine (shared by every worker in queue mode)."""
        self.host = host
        self.media = media
        self.sources = sources
        self.sessions = sessions if sessions is not None else MemorySessions()

    @property
    def settings(self):
        return self.host.settings

    @property
    def model_version(self) -> str:
        return self.host.model_version

    def error(self, message: str, status: int) -> dict:
        """``task_error`` naming the serving model version."""
        return task_error(message, status, self.model_version)

    def predict(self, request: PredictRequest) -> list[dict]:
        """One Label Studio prediction per task of ``request`` (parsed where it arrived), in order.

        The project's images come from where ``sources`` says (this process's settings, or what /setup
        said). Without a prompt (automatic) every task of the request is an episode of one lockstep batch.
        """
        source = self.sources.source_for(request.project)
        if request.prompt is None:
            return self._automatic(request.tasks, request.config, source)
        results = []
        for task in request.tasks:
            try:
                results.append(self._interactive(task, request.config, request.prompt, source, request.project))
            except RequestError as exc:
                results.append(self.error(exc.message, exc.status))
        return results

    def refine(self, tasks: list, config: LabelConfig, masks: list, project: Any = None) -> list[dict]:
        """``predict`` without a prompt, but each task's episode starts from ``masks[i]`` ((H, W) bool, at
        Label Studio's size of the image: resized to the loaded image): the policy refines existing masks.
        One lockstep batch, one prediction (or per-task error) per task, in order."""
        return self._automatic(tasks, config, self.sources.source_for(project), masks)

    def _automatic(self, tasks: list, config: LabelConfig, source: MediaSource,
                   masks: Optional[list] = None) -> list[dict]:
        """Each task's episode starts from ``masks[i]`` when given, else from SAM 3's instance when a text
        model is configured (without a policy that mask is the prediction), else from nothing."""
        results: list[Optional[dict]] = [None] * len(tasks)
        pending: list[tuple[int, EpisodeRequest]] = []
        policy = self.host.policy_checkpoint is not None
        for i, task in enumerate(tasks):
            try:
                if not policy and (masks is not None or not self.host.starts_from_text):
                    raise RequestError(f"task {task_id(task)!r}: {NO_POLICY}", 501)
                image = self.media.load(image_url(task, config), task_id(task), source)
                text = expression(task, config) or ""
                if masks is not None:
                    pending.append((i, EpisodeRequest(image, text, mask=_start_mask(masks[i], image.shape))))
                    continue
                grounded = self.host.start_from_text(image, text) if self.host.starts_from_text else None
                if not policy:  # SAM 3 alone: its mask and score are the prediction (it raised if it found none)
                    results[i] = self._prediction(EpisodeResult(grounded.mask, grounded.score), config,
                                                  image.shape, None)
                else:
                    pending.append((i, EpisodeRequest(image, text, mask=grounded.mask if grounded else None)))
            except RequestError as exc:
                results[i] = self.error(exc.message, exc.status)
        episodes = self.host.run_policy([request for _, request in pending]) if pending else []
        for (i, request), episode in zip(pending, episodes):
            results[i] = self._prediction(episode, config, request.image.shape, None)
        return results

    def _interactive(self, task: Any, config: LabelConfig, prompt: Prompt, source: MediaSource, project: Any) -> dict:
        key = f"{project_id(project)}:{task_id(task)}" if task_id(task) is not None else None
        continued = self._continued(key, prompt, task, config)
        prompt = continued.prompt
        image = self.media.load(image_url(task, config), task_id(task), source)
        height, width = image.shape[:2]
        check_claimed_size(prompt, width, height)  # before any mask is made at that size
        clicks = [c.to_pixels(width, height) for c in prompt.clicks]
        box = prompt.box.to_pixels(width, height) if prompt.box is not None else None
        start = prompt.mask((width, height))  # a smart brush's regions: the mask the episode refines
        policy = (self.host.policy_checkpoint is not None
                  and (self.settings.refine or (start is not None and not clicks)))
        if not clicks and box is None and not (start is not None and policy):  # nothing asked: no mask
            return {"result": [], "score": 0.0, "model_version": self.host.model_version}
        if policy:  # the policy continues from the brush mask and/or the annotator's clicks
            request = EpisodeRequest(image, expression(task, config, prompt.label) or "", box, clicks, mask=start)
            episode = self.host.run_policy([request])[0]
        elif start is not None:  # the annotator's clicks refine the brush mask
            episode = self.host.run_clicks(image, clicks, box, mask=start)
        else:
            episode = self.host.run_clicks(image, clicks, box)
        answer = self._prediction(episode, config, image.shape, prompt, given=len(clicks),
                                  region_id=continued.region_id, scored=policy or self.host.tool_scores_iou)
        if key is not None and "result" in answer:
            self.sessions.put(key, remember(continued, episode.mask, task))
        return answer

    def _continued(self, key: Optional[str], prompt: Prompt, task: Any, config: LabelConfig) -> Continued:
        """The object this request's prompt refines (``sessions``): the remembered clicks merged in."""
        brushes = {o.name for o in config.outputs if o.tag == "BrushLabels"}
        session = self.sessions.get(key) if key is not None else None
        return continue_object(prompt, session, task, brushes, self.settings.max_image_pixels)

    def _prediction(self, episode: EpisodeResult, config: LabelConfig, shape: tuple, prompt: Optional[Prompt],
                    given: int = 0, region_id: Optional[str] = None, scored: bool = True) -> dict:
        """Label Studio JSON: the mask on every mask control (a brush region; polygon regions, one per part),
        and the policy's clicks on the trajectory control. Every region and the prediction carry the
        episode's score (the policy's estimate, else the tool's IoU prediction); with ``scored`` False (a tool
        whose score does not track the mask's quality, ``Segmenter.score_estimates_iou``) none of them has a
        ``score``. An empty mask is no prediction: a per-task error (EMPTY_MASK), so Label Studio stores nothing."""
        mask = fit_to_size(episode.mask, prompt.size if prompt else None)
        if not mask.any():
            return self.error(EMPTY_MASK, 422)
        rotation = prompt.image_rotation if prompt else 0
        result = []
        for output in config.outputs:
            label = output.label_for(prompt.label if prompt else None)
            result += output.regions(mask, label, config.image_name, episode.score, rotation, region_id)
        if config.trajectory is not None:
            clicks = [step.click for step in episode.trajectory[given:]]
            for region in config.trajectory.regions(clicks, config.image_name, shape[1], shape[0], rotation):
                result.append(dict(region, score=float(episode.score)))
        answer = {"result": result, "score": float(episode.score), "model_version": self.host.model_version}
        if not scored:  # Label Studio takes a prediction and regions without score
            del answer["score"]
            for region in result:
                region.pop("score", None)
        return answer


def _start_mask(mask: Optional[np.ndarray], shape: tuple) -> Optional[np.ndarray]:
    """A mask to refine, drawn at Label Studio's size of the image, at the loaded image's size ``shape``
    (RequestError 422 when it is not the same picture up to scale)."""
    if mask is None:
        return None
    height, width = shape[:2]
    check_claimed_size(Prompt(size=(mask.shape[1], mask.shape[0]), size_field="the mask's original_width"),
                       width, height)
    return fit_to_size(mask, (width, height))


def fit_to_size(mask: np.ndarray, size: Optional[tuple[int, int]]) -> np.ndarray:
    """The (H, W) bool mask at Label Studio's ``(original_width, original_height)`` when that differs
    from the image we loaded (a brush RLE of another size would not line up in the editor)."""
    if not size or min(size) <= 0 or size == (mask.shape[1], mask.shape[0]):
        return mask
    import cv2

    log.warning("Label Studio sees the image as %sx%s, we loaded %sx%s: resizing the mask",
                size[0], size[1], mask.shape[1], mask.shape[0])
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
