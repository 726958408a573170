"""The model version a process names: a function of the settings and the registry.

``SEGAGENT_MODEL_VERSION`` wins; else the promoted registry version (its name changes on promotion, so
Label Studio refreshes its predictions); else a name derived from the policy, the tool and its weights, and the SAM 3 text model.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Optional

from . import __version__
from .registry import Registry
from .settings import Settings

log = logging.getLogger(__name__)

# Seconds without version checks after one failed (Redis away): requests must not each wait for a timeout.
RECHECK_AFTER_FAILURE = 5.0

Announcement = tuple[Optional[str], int]  # (version or None, promotion counter)


def model_version(settings: Settings, version: Optional[str] = None) -> str:
    """The name Label Studio sees for predictions made with registry ``version`` (None: SEGAGENT_POLICY)."""
    if settings.model_version:
        return settings.model_version
    if version:
        return version
    text = f"sam3text-{Path(settings.text_model).name}" if settings.text_model else ""
    if text and not settings.policy:  # SAM 3's masks alone: the click tool makes none of them
        return f"segagent-{text}-v{__version__}"
    weights = {"sam": settings.sam_checkpoint, "hf-sam": settings.sam_model,
               "simpleclick": settings.simpleclick_checkpoint}.get(settings.segmenter)
    name = f"{settings.segmenter}-{Path(weights).stem}" if weights else settings.segmenter
    policy = f"{Path(settings.policy).name}-" if settings.policy else ""
    return f"segagent-{policy}{name}{'-' + text if text else ''}-v{__version__}"


class Announcements:
    """Notices promotions: ``changed()`` is the announced (version, counter) when it differs from the last
    one seen, else None. Cheap (one Redis GET or one small file read); after a failed read (Redis away,
    a torn file) it reads nothing for RECHECK_AFTER_FAILURE seconds, so requests never each wait."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._seen: Announcement = (None, -1)
        self._quiet_until = 0.0

    def changed(self) -> Optional[Announcement]:
        if time.monotonic() < self._quiet_until:
            return None
        try:
            announced = self.registry.announced()
        except Exception as exc:  # Redis away or a torn file: keep what is known
            log.warning("cannot read the current model version: %s", exc)
            self._quiet_until = time.monotonic() + RECHECK_AFTER_FAILURE
            return None
        if announced == self._seen:
            return None
        self._seen = announced
        return announced


class VersionName:
    """The version name of a process that loads no model (a queue-mode web process, the pre-annotation
    planner): the announced registry version, refreshed on ``refresh()``."""

    def __init__(self, settings: Settings, registry: Optional[Registry] = None):
        self.settings = settings
        self._announcements = Announcements(registry or Registry.from_settings(settings))
        self._version: Optional[str] = None
        self._refreshing = threading.Lock()  # held by the one background check running, if any
        self.refresh()

    @property
    def model_version(self) -> str:
        return model_version(self.settings, self._version)

    def refresh(self, background: bool = False) -> None:
        """Notice a promotion (``background``: off this thread, for routes with tight timeouts)."""
        if background:
            # one check at a time: while Redis is slow, every /health and /setup would start another
            if self._refreshing.acquire(blocking=False):
                threading.Thread(target=self._refresh_and_release, name="version-check", daemon=True).start()
            return
        announced = self._announcements.changed()
        if announced is not None:
            self._version = announced[0]

    def _refresh_and_release(self) -> None:
        try:
            self.refresh()
        finally:
            self._refreshing.release()
