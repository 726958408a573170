"""Queue names, Redis keys and connections shared by the web process, the workers and the CLI."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry

# Priority order: a worker listening to several queues always takes an annotator's click before
# the next batch chunk, so a big pre-annotation never starves interactive use.
INTERACTIVE, BATCH, TRAIN = "interactive", "batch", "train"
KINDS: tuple[str, ...] = (INTERACTIVE, BATCH, TRAIN)


@dataclass(frozen=True)
class QueueNames:
    """``<prefix>-interactive`` etc., and the keys where workers publish their health."""

    prefix: str = "segagent"

    def queue(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown queue {kind!r}: expected one of {', '.join(KINDS)}")
        return f"{self.prefix}-{kind}"

    def queues(self, kinds: tuple[str, ...] = KINDS) -> list[str]:
        """Queue names in priority order (the order given is kept: callers pass them by priority)."""
        return [self.queue(kind) for kind in kinds]

    @property
    def workers_key(self) -> str:
        """A set of the names of workers that announced themselves (stale ones are pruned on read)."""
        return f"{self.prefix}:workers"

    def health_key(self, worker: str) -> str:
        """A hash with the worker's health; it expires when the worker stops beating."""
        return f"{self.prefix}:health:{worker}"

    def alive_key(self, worker: str) -> str:
        """Set with a TTL of SEGAGENT_CLICK_FAILOVER seconds, refreshed about three times per TTL by the
        worker's heartbeat thread: missing while the worker is known (``failover_key``) = it died."""
        return f"{self.prefix}:alive:{worker}"

    def known_key(self, worker: str) -> str:
        """A worker that refreshes ``alive_key`` says so here (a longer TTL), so a worker without
        liveness keys (another version, a plain ``rq worker``) is never taken for dead."""
        return f"{self.prefix}:known:{worker}"

    def gone_key(self, job_id: str) -> str:
        """Set by the web process that stopped waiting for ``job_id`` (it answered 504): the job's worker
        checks it between tasks and leaves the rest undone."""
        return f"{self.prefix}:gone:{job_id}"

    def train_key(self, project: Optional[int]) -> str:
        """The id of the train job of ``project``'s queued or running round (SET NX): one round per project."""
        return f"{self.prefix}:train:{project if project is not None else 'all'}"

    def failover_key(self, job_id: str, worker: str) -> str:
        """SET NX lock: one re-queue of ``job_id`` per dead ``worker``, whichever web process sees it first."""
        return f"{self.prefix}:failover:{job_id}:{worker}"


def connect(url: str, timeout: float, retries: int = 1) -> redis.Redis:
    """A client that fails within ``timeout`` seconds when Redis is down, instead of hanging.

    One quick retry only (``retries``): the web process must answer Label Studio, not wait for Redis.
    """
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=RedisRetry(ExponentialBackoff(cap=0.2, base=0.05), retries), health_check_interval=30,
    )
