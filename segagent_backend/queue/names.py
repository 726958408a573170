"""Queue names, Redis keys and connections shared by the web process, the workers and the CLI."""
from __future__ import annotations

from dataclasses import dataclass

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


def connect(url: str, timeout: float) -> redis.Redis:
    """A client that fails within ``timeout`` seconds when Redis is down, instead of hanging.

    One quick retry only: the web process must answer Label Studio, not wait for Redis to return.
    """
    return redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=RedisRetry(ExponentialBackoff(cap=0.2, base=0.05), 1), health_check_interval=30,
    )
