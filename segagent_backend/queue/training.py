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
from rq.job import Retry
from rq.serializers import JSONSerializer

from ..learning import new_run_id, run_training
from ..settings import Settings
from . import jobs
from .names import TRAIN, QueueNames, connect

log = logging.getLogger(__name__)

StartTraining = Callable[[Optional[int], str], dict]


def train(data: dict) -> dict:
    """The worker's side: one round with this worker's settings; the report is the job's result."""
    predictor = jobs.resident()
    report = run_training(predictor.settings, data.get("project"), data.get("source", "corrections"), data["run"])
    predictor.maybe_reload()  # a promoted version serves this worker's next job
    return asdict(report)


def queued_starter(settings: Settings, queue: Optional[Callable[[], Queue]] = None) -> StartTraining:
    """Start rounds as jobs on the train queue."""
    def start(project: Optional[int], source: str) -> dict:
        from .dispatch import QueueUnavailable

        q = queue() if queue is not None else train_queue(settings)
        run = new_run_id()
        try:
            job = q.enqueue("segagent_backend.queue.training.train", {"project": project, "source": source, "run": run},
                            job_timeout=settings.train_timeout, result_ttl=7 * 24 * 3600,
                            failure_ttl=7 * 24 * 3600, retry=Retry(max=settings.job_retries) if settings.job_retries else None,
                            description=f"train project {project} ({source})")
        except redis.RedisError as exc:
            raise QueueUnavailable(exc) from None
        return {"queue": q.name, "job": job.id, "run": run}

    return start


def train_queue(settings: Settings) -> Queue:
    conn = connect(settings.redis_url, settings.redis_timeout)
    return Queue(QueueNames(settings.queue_prefix).queue(TRAIN), connection=conn, serializer=JSONSerializer)


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
