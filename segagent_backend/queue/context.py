"""What every job of a ``segagent worker`` runs with: ONE ``WorkerContext`` per worker process, built by
the same assembly as the web app (``assembly.worker_context``) and handed to each job function as its
``context`` argument by the worker that runs it (``worker.SegagentJob``). Nothing is kept in a module:
a job function called without its context (a plain ``rq worker``, a direct call) fails at once with
NoWorkerContext instead of loading models from the environment behind the caller's back."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..labelstudio.predictions import Predictions
from ..model_host import ModelHost
from ..settings import Settings


class NoWorkerContext(RuntimeError):
    """A job function ran without the worker context only ``segagent worker`` passes it."""


@dataclass(frozen=True)
class WorkerContext:
    """The resident parts of one worker: its predictions over its one model host (the models load once per
    worker, the embedding cache stays warm between clicks), its media loader and its own media sources."""

    predictions: Predictions

    @property
    def host(self) -> ModelHost:
        return self.predictions.host

    @property
    def settings(self) -> Settings:
        return self.predictions.settings

    @property
    def model_version(self) -> str:
        return self.predictions.model_version


def require(context: Optional[WorkerContext], job: str) -> WorkerContext:
    """``context``, or NoWorkerContext naming ``job`` when there is none."""
    if context is None:
        raise NoWorkerContext(f"job {job} ran without a worker context: segagent's jobs run in `segagent worker` "
                              f"only, which passes each one its resident models (a plain `rq worker` or a direct "
                              f"call has none, and no model is loaded from the environment behind its back)")
    return context
