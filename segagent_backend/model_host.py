"""The resident models of one process: loaded once, hot-reloaded on promotion, run under one lock.

One ``ModelHost`` per process (a web process in embedded mode, a queue worker): the tool, the SAM 3
text model (when configured) and the policy load once (in a background thread at start, or on first
use), never per request; a newly promoted registry version replaces the policy between requests; model
calls are serialised with a lock because a segmenter holds the current image.

The model lock is first come, first served (:class:`FairLock`) and an annotator's clicks take it one
tool step at a time (``agent.episode.run_given_clicks_stepwise``): a 30-click replay lets a one-click
request on another image in after its current step instead of after all 30, and a click list already
in the step cache is answered without the lock. Nothing here is taken by ``status`` or the other
properties /health reads.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

import numpy as np

from .agent.mask_estimates import estimate_masks
from .agent.episode import StepCache, run_given_clicks_stepwise
from .agent.grounding import TextGrounder, TextStart, Ungroundable, text_start
from .agent.loop import EpisodeRequest, run_episodes
from .agent.policies import Policy
from .agent.segmenters import EmbeddingCache, Segmenter
from .agent.types import EpisodeResult
from .errors import NO_AUDIT_POLICY, NO_POLICY, ModelUnavailable, RequestError
from .model_paths import check_model_paths
from .registry import Registry
from .settings import Settings
from .versions import Announcements, model_version
from .wiring import loop_config, policy_from_settings, segmenter_from_settings, text_model_from_settings

log = logging.getLogger(__name__)

BuildSegmenter = Callable[[Settings, EmbeddingCache], Segmenter]
BuildPolicy = Callable[[Settings, str], Policy]


class FairLock:
    """A lock handed to its waiters in arrival order (``threading.Lock`` is not: the thread that just
    released it usually takes it again before a woken waiter runs, so a caller releasing between the
    steps of a long replay could still starve the others). Context manager, not re-entrant."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder's release(): the lock is now ours (handed over, never free)

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unheld FairLock")
            if self._waiters:
                self._waiters.popleft().release()  # hand over: stays held
            else:
                self._held = False

    def locked(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        """Callers queued for the lock now."""
        return len(self._waiters)

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class ModelHost:
    """Load, reload, lock, run. ``build_segmenter`` / ``build_policy`` default to ``wiring``'s."""

    def __init__(self, settings: Settings, registry: Optional[Registry] = None,
                 build_segmenter: BuildSegmenter = segmenter_from_settings,
                 build_policy: BuildPolicy = policy_from_settings):
        """Checks the configured weights paths (SettingsError naming the variable); loads nothing."""
        check_model_paths(settings)
        self.settings = settings
        self.cache = EmbeddingCache(settings.cache_bytes)
        self.reload_error: Optional[str] = None  # the last failed hot reload; the old policy still serves
        self._registry = registry or Registry.from_settings(settings)
        self._build_segmenter, self._build_policy = build_segmenter, build_policy
        self._announcements = Announcements(self._registry)
        self._version: Optional[str] = None  # the registry version whose policy serves (or will)
        self._segmenter: Optional[Segmenter] = None
        self._text_model: Optional[TextGrounder] = None
        self._policy: Optional[Policy] = None
        self._load_error: Optional[str] = None
        self._loaded = threading.Event()
        self._load_lock = threading.Lock()  # one loader at a time
        self._model_lock = FairLock()  # one model call (or click step) at a time, first come first served
        self._steps = StepCache()
        self._loop = loop_config(settings)
        self._follow_announcement()  # model_version names the version this process will serve from the start

    # ----- what serves -----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``loading`` (also: not asked to load yet), ``ready`` or ``failed: <reason>``."""
        if self._load_error:
            return f"failed: {self._load_error}"
        return "ready" if self._loaded.is_set() else "loading"

    @property
    def model_version(self) -> str:
        """The name of what serves (``versions.model_version``)."""
        return model_version(self.settings, self._version)

    @property
    def policy_checkpoint(self) -> Optional[str]:
        """The folder (or hub id) the policy loads from: the current version's, else SEGAGENT_POLICY."""
        return self._checkpoint(self._version)

    @property
    def starts_from_text(self) -> bool:
        """A SAM 3 text model is configured (SEGAGENT_TEXT_MODEL): automatic episodes start from its instances."""
        return self.settings.text_model is not None

    @property
    def serving_policy(self) -> Optional[Policy]:
        """The loaded policy (None before loading, or without a policy)."""
        return self._policy

    @property
    def tool_scores_iou(self) -> bool:
        """Whether the tool's score estimates the mask's IoU (``Segmenter.score_estimates_iou``; True before
        loading): only then does a prediction of the tool alone carry it to Label Studio."""
        return bool(getattr(self._segmenter, "score_estimates_iou", True))

    # ----- loading ---------------------------------------------------------------------------------
    def load(self, background: bool = False) -> None:
        """Load the tool and the policy once; later calls return at once. A failure is kept (``status``)
        and raised as ModelUnavailable by this and every later call. ``background``: in a thread."""
        if background:
            threading.Thread(target=self._load_quietly, name="model-loader", daemon=True).start()
            return
        if self._loaded.is_set():  # never waits behind a hot reload holding the load lock
            return
        with self._load_lock:
            if not self._loaded.is_set() and not self._load_error:
                self._load_once()
        if self._load_error:  # the tool or the policy: either makes the service unusable
            raise ModelUnavailable(f"the model failed to load: {self._load_error}")

    def maybe_reload(self, background: bool = False) -> bool:
        """Load the newly announced model version, if any; True when the serving policy changed.

        Cheap when nothing changed (one Redis GET or one small file read), so embedded mode calls it
        before each request and a worker between jobs. The tool stays; only the policy is swapped,
        under the model lock, so no episode sees half of each. A version that fails to load is
        reported in ``reload_error`` and the old one keeps serving; it is not retried until the next
        promotion. ``background``: for routes with tight timeouts (/health 1 s, /setup 3 s), off-thread
        unless a load is under way (returns False).
        """
        if background:
            if not self._load_lock.locked():
                threading.Thread(target=self.maybe_reload, name="model-reload", daemon=True).start()
            return False
        with self._load_lock:
            announced = self._follow_announcement()
            if announced is None or not self._loaded.is_set():
                return False
            version = announced[0]
            if version == self._version:  # e.g. a rollback from a version that failed to load
                self.reload_error = None
                return False
            started = time.perf_counter()
            try:
                policy = self._load_policy(version)
            except Exception as exc:
                self.reload_error = f"version {version!r} failed to load: {type(exc).__name__}: {exc}"
                log.exception("hot reload of model version %r failed; %s keeps serving", version, self.model_version)
                return False
            with self._model_lock:
                self._policy, self._version = policy, version
            self.reload_error = None
            log.info("model version %s loaded in %.2f s", self.model_version, time.perf_counter() - started)
            return True

    # ----- running ---------------------------------------------------------------------------------
    def run_policy(self, requests: list[EpisodeRequest]) -> list[EpisodeResult]:
        """Episodes driven by the policy, all in lockstep (one batched policy call per step).
        RequestError (501) without a policy."""
        self.load()
        if self._policy is None:
            raise RequestError(NO_POLICY, 501)
        with self._model_lock:
            return run_episodes(self._policy, self._segmenter, requests, self._loop)

    def start_from_text(self, image: np.ndarray, expression: str) -> Optional[TextStart]:
        """SAM 3's best instance of ``expression``'s noun phrase on ``image`` ((H, W, 3) uint8 RGB), judged by
        the serving policy when there is one (``agent.grounding.text_start``), under the model lock.

        When SAM 3 finds nothing: RequestError (422, naming the phrase) without a policy; None with one
        (its episode starts from an empty mask, as without a text model). RuntimeError without a text model.
        """
        self.load()
        if self._text_model is None:
            raise RuntimeError("no SAM 3 text model is configured (SEGAGENT_TEXT_MODEL)")
        try:
            with self._model_lock:
                start = text_start(self._text_model, self._policy, image, expression, self.settings.text_threshold,
                                   self.settings.release_protocol)
        except Ungroundable as exc:
            if self._policy is None:
                raise RequestError(str(exc), 422) from None
            log.info("%s: the policy starts from an empty mask", exc)
            return None
        log.debug("SAM 3 found %d %r; the start scores %.3f (policy estimate %s)", start.instances, start.phrase,
                  start.score, start.estimate)
        return start

    def run_clicks(self, image: np.ndarray, clicks: list, box=None, mask: Optional[np.ndarray] = None) -> EpisodeResult:
        """Given clicks (pixels) on ``image`` ((H, W, 3) uint8 RGB) through the tool -> the episode's result;
        ``mask`` ((H, W) bool): the start mask the clicks refine (a brush region).

        The model lock is taken per tool step, not for the whole replay (other callers interleave), and
        not at all when the step cache has the whole click list."""
        self.load()
        return run_given_clicks_stepwise(self._segmenter, image, clicks, box, self._steps, self._model_lock,
                                         mask=mask)

    def estimate_masks(self, masks: list, batch_size: int = 8) -> list[Optional[float]]:
        """The serving policy's IoU estimate (0..1, None where its answer has none) of each
        ``agent.mask_estimates.MaskToJudge``, batched, under the model lock. RequestError (501) without a policy."""
        self.load()
        if self._policy is None:
            raise RequestError(NO_AUDIT_POLICY, 501)
        with self._model_lock:
            return estimate_masks(self._policy, masks, batch_size, self.settings.release_protocol)

    # ----- internals -------------------------------------------------------------------------------
    def _load_quietly(self) -> None:
        try:
            self.load()
        except ModelUnavailable:
            pass  # logged and kept in status

    def _load_once(self) -> None:
        started = time.perf_counter()
        self._follow_announcement()  # the current version, if any, is what loads
        try:
            self._segmenter = self._build_segmenter(self.settings, self.cache)
            self._text_model = text_model_from_settings(self.settings, self.cache)
            self._policy = self._load_policy(self._version)
        except Exception as exc:
            self._load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the models failed")
            return
        log.info("models loaded in %.2f s (%s, policy %s)", time.perf_counter() - started,
                 self.settings.segmenter, self.policy_checkpoint)
        self._loaded.set()

    def _follow_announcement(self):
        """The announced (version, counter) when it changed since the last check, else None; before
        loading, the announced version becomes the one to load."""
        announced = self._announcements.changed()
        if announced is not None and not self._loaded.is_set():
            self._version = announced[0]
        return announced

    def _checkpoint(self, version: Optional[str]) -> Optional[str]:
        return str(self._registry.model_folder(version)) if version else self.settings.policy

    def _load_policy(self, version: Optional[str]) -> Optional[Policy]:
        checkpoint = self._checkpoint(version)
        return None if checkpoint is None else self._build_policy(self.settings, checkpoint)
