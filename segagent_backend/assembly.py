"""The service's parts put together, in ONE place for every process that runs a model: the web app in
embedded mode (``predictions``), a queue worker (``worker_context``) and the commands that run one in their
own process (``segagent predict``, ``segagent audit``: ``model_host``). ``wiring`` builds each model from the
settings; this module decides which parts a process holds and hands them to it."""
from __future__ import annotations

from typing import Optional

from .labelstudio.predictions import Predictions
from .labelstudio.sessions import RedisSessions
from .labelstudio.sources import ProjectSources
from .model_host import BuildSegmenter, ModelHost
from .queue.context import WorkerContext
from .queue.names import connect
from .registry import Registry
from .settings import Settings
from .wiring import media_loader, segmenter_from_settings


def model_host(settings: Settings, registry: Optional[Registry] = None,
               build_segmenter: BuildSegmenter = segmenter_from_settings) -> ModelHost:
    """The process's one model host (the tool, SAM 3's text model, the policy of the serving version);
    loads nothing yet. ``build_segmenter``: ``wiring.segmenter_from_settings``, or a caller's wrapper of it."""
    return ModelHost(settings, registry, build_segmenter=build_segmenter)


def predictions(settings: Settings, sources: ProjectSources, host: Optional[ModelHost] = None,
                registry: Optional[Registry] = None) -> Predictions:
    """Label Studio predictions over ``host`` (default: ``model_host``): task images through the settings'
    media loader from where ``sources`` says; click sessions in Redis with REDIS_URL (one annotator's
    clicks reach whichever worker is free), else in this process."""
    sessions = RedisSessions(connect(settings.redis_url, settings.redis_timeout), settings.queue_prefix) \
        if settings.redis_url else None
    return Predictions(host or model_host(settings, registry), media_loader(settings), sources, sessions)


def worker_context(settings: Settings) -> WorkerContext:
    """What every job of a ``segagent worker`` runs with: its own predictions, whose media sources come from
    its OWN settings (a job carries no credential)."""
    return WorkerContext(predictions(settings, ProjectSources.from_settings(settings)))
