"""The resident model of a process and the Label Studio predictions it makes.

One ``Predictor`` per process: the segmenter is loaded once (in a background thread at start, or on
first use), never per request and never in /setup; model calls are serialised with a lock because
a segmenter holds the current image.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import __version__
from .agent.episode import StepCache, run_given_clicks
from .agent.loop import EpisodeRequest, run_episodes
from .agent.policies import Policy, build_policy
from .agent.segmenters import EmbeddingCache, Segmenter, build_segmenter
from .agent.types import EpisodeResult
from .errors import ModelUnavailable, RequestError
from .labelstudio.config import LabelConfig, parse_label_config
from .labelstudio.context import Prompt, parse_context
from .labelstudio.tasks import expression, image_url, task_id
from .media import MediaLoader, MediaSource
from .registry import Registry
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)

NO_POLICY = (
    "automatic predictions need a SegAgent policy model: set SEGAGENT_POLICY (a model folder or hub id); "
    "without one, segment interactively with the smart KeyPointLabels/RectangleLabels tools"
)


# Seconds without version checks after one failed (Redis away): requests must not each wait for a timeout.
RECHECK_AFTER_FAILURE = 5.0


def project_id(project: Any) -> Optional[str]:
    """Label Studio sends ``"3.1746612998"`` (id.timestamp) or a number: the id is before the dot."""
    if project is None:
        return None
    return str(project).split(".", 1)[0] or None


class Predictor:
    def __init__(self, settings: Settings, check_paths: bool = True):
        """``check_paths=False`` where the weights live elsewhere (the web process in queue mode)."""
        self.settings = settings
        self.cache = EmbeddingCache(settings.cache_bytes)
        self.steps = StepCache()
        self.media = MediaLoader(
            settings.media_cache_dir,
            settings.max_image_pixels,
            settings.media_timeout,
            MediaSource(settings.label_studio_url, settings.label_studio_api_key),
        )
        self.project_sources: dict[str, MediaSource] = {}  # what /setup told us, per project
        self._segmenter: Optional[Segmenter] = None
        self._policy: Optional[Policy] = None
        self.loop_config = settings.loop_config()
        self._load_error: Optional[str] = None
        self._loaded = threading.Event()
        self._load_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.load_seconds: Optional[float] = None
        # model versions: the promoted one replaces SEGAGENT_POLICY (None = no version promoted)
        self.registry = Registry.from_settings(settings)
        self._announced: tuple[Optional[str], int] = (None, -1)  # what maybe_reload last acted on
        self._version: Optional[str] = None  # the registry version whose policy serves (or will)
        self.reload_error: Optional[str] = None  # the last failed hot reload; the old policy still serves
        self._unreachable_until = 0.0  # after a failed check, skip checks a while (no timeout per request)
        if check_paths:
            check_model_paths(settings)
        self._check_announced()  # model_version names the version this process will serve from the start

    # ----- the model -------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        s = self.settings
        if s.model_version:
            return s.model_version
        if self._version:  # a registry version: its name changes on promotion, so LS refreshes
            return self._version
        weights = {"sam": s.sam_checkpoint, "hf-sam": s.sam_model}.get(s.segmenter)
        name = f"{s.segmenter}-{Path(weights).stem}" if weights else s.segmenter
        policy = f"{Path(s.policy).name}-" if s.policy else ""
        return f"segagent-{policy}{name}-v{__version__}"

    @property
    def status(self) -> str:
        if self._load_error:
            return f"failed: {self._load_error}"
        return "ready" if self._loaded.is_set() else "loading"

    def start_loading(self) -> None:
        threading.Thread(target=self.load, name="model-loader", daemon=True).start()

    def load(self) -> None:
        """Load the segmenter once; later calls return at once. Failures are kept and reported."""
        with self._load_lock:
            if self._loaded.is_set() or self._load_error:
                return
            started = time.perf_counter()
            s = self.settings
            self._check_announced()  # the current version, if any, is what loads
            try:
                self._segmenter = segmenter_from_settings(s, self.cache)
                self._policy = self._build_policy(self._version)
            except Exception as exc:
                self._load_error = f"{type(exc).__name__}: {exc}"
                log.exception("loading the models failed")
                return
            self.load_seconds = time.perf_counter() - started
            log.info("models loaded in %.2f s (%s, policy %s)", self.load_seconds, s.segmenter, self.policy_source)
            self._loaded.set()

    @property
    def policy_source(self) -> Optional[str]:
        """The folder (or hub id) the policy loads from: the current version's, else SEGAGENT_POLICY."""
        return str(self.registry.model_folder(self._version)) if self._version else self.settings.policy

    @property
    def has_policy(self) -> bool:
        return self.policy_source is not None

    def _build_policy(self, version: Optional[str]) -> Optional[Policy]:
        s = self.settings
        source = str(self.registry.model_folder(version)) if version else s.policy
        if source is None:
            return None
        return build_policy(s.policy_kind, source, device=s.device, dtype=s.dtype, coordinates=s.coordinates,
                            temperature=s.temperature)

    def _check_announced(self) -> Optional[tuple[Optional[str], int]]:
        """The announced (version, counter) when it changed since the last check, else None."""
        if time.monotonic() < self._unreachable_until:
            return None
        try:
            announced = self.registry.announced()
        except Exception as exc:  # Redis away or a torn file: keep serving what is loaded
            log.warning("cannot read the current model version: %s", exc)
            self._unreachable_until = time.monotonic() + RECHECK_AFTER_FAILURE
            return None
        if announced == self._announced:
            return None
        self._announced = announced
        if not self._loaded.is_set():  # nothing loaded yet: load() picks this version
            self._version = announced[0]
        return announced

    def maybe_reload(self) -> bool:
        """Load the newly announced model version, if any; True when the serving policy changed.

        Cheap when nothing changed (one Redis GET or one small file read), so embedded mode calls it
        before each request and a worker between jobs. The segmenter stays; only the policy is
        swapped, under the model lock, so no episode sees half of each. A version that fails to
        load is reported in ``reload_error`` and the old one keeps serving; it is not retried until
        the next promotion (the counter changes).
        """
        with self._load_lock:  # one loader at a time; the initial load() holds it too
            announced = self._check_announced()
            if announced is None or not self._loaded.is_set():
                return False
            if announced[0] == self._version:  # e.g. a rollback from a version that failed to load
                self.reload_error = None
                return False
            version = announced[0]
            started = time.perf_counter()
            try:
                policy = self._build_policy(version)
            except Exception as exc:
                self.reload_error = f"version {version!r} failed to load: {type(exc).__name__}: {exc}"
                log.exception("hot reload of model version %r failed; %s keeps serving", version, self.model_version)
                return False
            with self._model_lock:
                self._policy, self._version = policy, version
            self.reload_error = None
            log.info("model version %s loaded in %.2f s", self.model_version, time.perf_counter() - started)
            return True

    def reload_in_background(self) -> None:
        """For routes with tight timeouts (/health 1 s, /setup 3 s): notice a promotion and load it
        off-thread; /predict (100 s) and workers call ``maybe_reload`` directly."""
        if not self._load_lock.locked():  # a load or reload is already under way otherwise
            threading.Thread(target=self.maybe_reload, name="model-reload", daemon=True).start()

    def segmenter(self) -> Segmenter:
        self.load()
        if self._load_error:  # the segmenter or the policy: either makes the service unusable
            raise ModelUnavailable(f"the model failed to load: {self._load_error}")
        return self._segmenter

    def policy(self) -> Policy:
        self.segmenter()  # loads both, or raises
        if self._policy is None:
            raise RequestError(NO_POLICY, 501)
        return self._policy

    # ----- Label Studio ----------------------------------------------------------------------
    def setup(self, schema: Any, project: Any, hostname: Any = None, access_token: Any = None) -> LabelConfig:
        """Check the label config and remember where the project's Label Studio is. Loads nothing."""
        config = parse_label_config(schema, self.settings.expression_field)
        pid = project_id(project)
        if pid and isinstance(hostname, str) and hostname.startswith(("http://", "https://")):
            self.project_sources[pid] = MediaSource(hostname, access_token if isinstance(access_token, str) else None)
        return config

    def predict(self, tasks: list, label_config: str, context: Any = None, project: Any = None,
                source: Optional[MediaSource] = None) -> list[dict]:
        """One Label Studio prediction per task, in order.

        ``source`` (where the project's Label Studio serves images) defaults to what the settings or
        /setup said; a queue worker gets it from the web process with the job.

        Without context (automatic) every task of the request is an episode of one lockstep batch.
        A task that cannot be predicted gets ``{"error": ..., "status": ...}`` and NO ``result``
        key, so Label Studio skips it instead of storing an empty prediction.
        """
        config = parse_label_config(label_config, self.settings.expression_field)
        prompt = parse_context(context, config)
        source = source or self.source_for(project)
        if prompt is None:
            return self._automatic(tasks, config, source)
        results = []
        for task in tasks:
            try:
                results.append(self._interactive(task, config, prompt, source))
            except RequestError as exc:
                results.append(self._error(exc))
        return results

    def _error(self, exc: RequestError) -> dict:
        return self.error(exc.message, exc.status)

    def error(self, message: str, status: int) -> dict:
        """A per-task error: no ``result`` key, so Label Studio stores no empty prediction."""
        return {"error": message, "status": status, "model_version": self.model_version}

    def _automatic(self, tasks: list, config: LabelConfig, source: MediaSource) -> list[dict]:
        results: list[Optional[dict]] = [None] * len(tasks)
        pending: list[tuple[int, EpisodeRequest]] = []
        for i, task in enumerate(tasks):
            try:
                if not self.has_policy:
                    raise RequestError(f"task {task_id(task)!r}: {NO_POLICY}", 501)
                image = self.media.load(image_url(task, config), task_id(task), source)
                pending.append((i, EpisodeRequest(image, expression(task, config) or "")))
            except RequestError as exc:
                results[i] = self._error(exc)
        episodes = self.run_policy([request for _, request in pending]) if pending else []
        for (i, request), episode in zip(pending, episodes):
            results[i] = self._prediction(episode, config, request.image.shape, None)
        return results

    def _interactive(self, task: Any, config: LabelConfig, prompt: Prompt, source: MediaSource) -> dict:
        image = self.media.load(image_url(task, config), task_id(task), source)
        height, width = image.shape[:2]
        clicks = [c.to_pixels(width, height) for c in prompt.clicks]
        box = prompt.box.to_pixels(width, height) if prompt.box is not None else None
        if not clicks and box is None:  # every click was deleted: no mask
            return {"result": [], "score": 0.0, "model_version": self.model_version}
        if self.settings.refine and self.has_policy:
            request = EpisodeRequest(image, expression(task, config, prompt.label) or "", box, clicks)
            episode = self.run_policy([request])[0]
        else:
            episode = self.run_episode(image, clicks, box)
        return self._prediction(episode, config, image.shape, prompt, given=len(clicks))

    def _prediction(self, episode: EpisodeResult, config: LabelConfig, shape: tuple, prompt: Optional[Prompt],
                    given: int = 0) -> dict:
        """Label Studio JSON: the brush region, and the policy's clicks on the trajectory control."""
        label = config.brush.label_for(prompt.label if prompt else None)
        rotation = prompt.image_rotation if prompt else 0
        mask = fit_to_size(episode.mask, prompt.size if prompt else None)
        result = [config.brush.region(mask, label, config.image_name, episode.score, rotation)]
        if config.trajectory is not None:
            clicks = [step.click for step in episode.trajectory[given:]]
            result += config.trajectory.regions(clicks, config.image_name, shape[1], shape[0], rotation)
        return {"result": result, "score": episode.score, "model_version": self.model_version}

    def run_policy(self, requests: list[EpisodeRequest]) -> list[EpisodeResult]:
        """Episodes driven by the policy, all in lockstep (one batched policy call per step)."""
        segmenter, policy = self.segmenter(), self.policy()
        with self._model_lock:
            return run_episodes(policy, segmenter, requests, self.loop_config)

    def run_episode(self, image: np.ndarray, clicks: list, box=None) -> EpisodeResult:
        """Given clicks (pixels) on ``image`` ((H, W, 3) uint8 RGB) -> the episode's result."""
        segmenter = self.segmenter()
        with self._model_lock:
            segmenter.set_image(image)
            return run_given_clicks(segmenter, clicks, box, self.steps)

    def source_for(self, project: Any) -> MediaSource:
        """The settings win; else what /setup told us about this project's Label Studio."""
        if self.settings.label_studio_url:
            return self.media.source
        return self.project_sources.get(project_id(project) or "", self.media.source)


def fit_to_size(mask: np.ndarray, size: Optional[tuple[int, int]]) -> np.ndarray:
    """The (H, W) bool mask at Label Studio's ``(original_width, original_height)`` when that differs
    from the image we loaded (a brush RLE of another size would not line up in the editor)."""
    if not size or min(size) <= 0 or size == (mask.shape[1], mask.shape[0]):
        return mask
    import cv2

    log.warning("Label Studio sees the image as %sx%s, we loaded %sx%s: resizing the mask",
                size[0], size[1], mask.shape[1], mask.shape[0])
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def segmenter_from_settings(settings: Settings, cache: Optional[EmbeddingCache] = None) -> Segmenter:
    """The interactive tool the settings name, loaded as every service process loads it."""
    return build_segmenter(settings.segmenter, cache if cache is not None else EmbeddingCache(settings.cache_bytes),
                           sam_checkpoint=settings.sam_checkpoint, sam_type=settings.sam_type,
                           sam_model=settings.sam_model, device=settings.device,
                           grabcut_max_side=settings.grabcut_max_side)


def check_model_paths(settings: Settings) -> None:
    """Fail at start, naming the setting, when a configured weights path does not exist."""
    if settings.segmenter == "sam" and not Path(settings.sam_checkpoint).is_file():
        raise SettingsError(f"SEGAGENT_SAM_CHECKPOINT={settings.sam_checkpoint!r}: no such file")
    folders = {"SEGAGENT_SAM_MODEL": settings.sam_model if settings.segmenter == "hf-sam" else None,
               "SEGAGENT_POLICY": settings.policy}
    for var, model in folders.items():  # a hub id is checked when it loads; a local path now
        looks_local = model is not None and (model.startswith((".", "/", "~")) or Path(model).exists())
        if looks_local and not Path(model).expanduser().is_dir():
            raise SettingsError(f"{var}={model!r}: no such model folder")
