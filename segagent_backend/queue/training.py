"""Where a training round runs: a job on the train queue (with REDIS_URL) or a thread of this process.

The webhook only asks for a round; it never waits for one. One round per process at a time in
embedded mode (a request arriving meanwhile is answered "already running": the corrections it
brought are in the store and join the next round). On the queue, a round killed with its worker is
retried with the same run id and resumes from its checkpoints.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from typing import Callable, Optional

import redis
from rq import Queue

from ..errors import QueueUnavailable
from ..learning import StartTraining, new_run_id, run_training
from ..settings import Settings
from . import jobs
from .names import TRAIN
from .submit import open_queue, submit

log = logging.getLogger(__name__)

RESULT_TTL = 7 * 24 * 3600  # a round's report stays readable for a week


def train(data: dict) -> dict:
    """The worker's side: one round with this worker's settings; the report is the job's result."""
    resident = jobs.resident()
    report = run_training(resident.settings, data.get("project"), data.get("source", "corrections"), data["run"])
    resident.host.maybe_reload()  # a promoted version serves this worker's next job
    return asdict(report)


def queued_starter(settings: Settings, queue: Optional[Callable[[], Queue]] = None) -> StartTraining:
    """Start rounds as jobs on the train queue."""
    def start(project: Optional[int], source: str) -> dict:
        q = queue() if queue is not None else open_queue(settings, TRAIN)
        run = new_run_id()
        try:
            job = submit(q, "segagent_backend.queue.training.train", {"project": project, "source": source, "run": run},
                         settings, job_timeout=settings.train_timeout, result_ttl=RESULT_TTL,
                         description=f"train project {project} ({source})")
        except redis.RedisError as exc:
            raise QueueUnavailable(exc) from None
        return {"queue": q.name, "job": job.id, "run": run}

    return start


class ThreadStarter:
    """Embedded mode: a round runs in a background thread of this process, one at a time."""

    def __init__(self, settings: Settings, on_done: Optional[Callable[[], None]] = None):
        self.settings = settings
        self.on_done = on_done
        self._lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None

    def __call__(self, project: Optional[int], source: str) -> dict:
        with self._lock:
            if self.thread is not None and self.thread.is_alive():
                return {"started": False, "running": True,
                        "note": "a training round is already running; these corrections join the next one"}
            run = new_run_id()
            self.thread = threading.Thread(target=self._run, args=(project, source, run), name=f"train-{run}",
                                           daemon=True)
            self.thread.start()
        return {"thread": self.thread.name, "run": run}

    def _run(self, project: Optional[int], source: str, run: str) -> None:
        report = run_training(self.settings, project, source, run)
        log.info("training run %s: %s %s", run, report.status, report.reason)
        if self.on_done is not None:
            self.on_done()
