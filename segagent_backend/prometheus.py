"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process)."""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

METHODS = frozenset({"GET", "POST"})  # the methods of our routes; any other counts as "other"


def method_label(method: str) -> str:
    """The request counter's ``method`` label: GET, POST or other (a caller cannot add series)."""
    return method if method in METHODS else "other"


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 100.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "segagent_http_requests_total",
            "HTTP requests by route (a url rule or 'unmatched'), method (GET, POST, other) and status",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "segagent_http_request_seconds", "HTTP request latency by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter(
            "segagent_predictions_total", "Task predictions by outcome (ok, error)",
            ["outcome"], registry=self.registry)
        self.errors = Counter(
            "segagent_errors_total",
            "4xx/5xx answers by scope (request: a whole reply; task: a per-task error inside a /predict reply) "
            "and status; their reasons are in the log", ["scope", "status"], registry=self.registry)
        self.webhooks = Counter(
            "segagent_webhooks_total", "Webhook events by action", ["action"], registry=self.registry)
        self.cache_bytes = Gauge(
            "segagent_embedding_cache_bytes", "Bytes held by the per-image embedding cache", registry=self.registry)
        self.cache_entries = Gauge(
            "segagent_embedding_cache_entries", "Images held by the embedding cache", registry=self.registry)
        self.model_ready = Gauge(
            "segagent_model_ready", "1 when the model is loaded, 0 while loading or failed", registry=self.registry)

        self.job_latency = Histogram(
            "segagent_job_seconds", "Enqueue-to-result time of queued jobs, by queue",
            ["queue"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def count_error(self, scope: str, status: int) -> None:
        self.errors.labels(scope, str(status)).inc()

    def observe_job(self, queue: str, seconds: float) -> None:
        self.job_latency.labels(queue).observe(seconds)

    def watch_queues(self, snapshot: Callable[[], Any]) -> None:
        """Queue depths, running/failed jobs and live workers, read from Redis at every scrape."""
        self.registry.register(_QueueCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _QueueCollector:
    """Reads ``snapshot()`` (a ``queue.status.Snapshot``) when Prometheus scrapes, never in between."""

    def __init__(self, snapshot: Callable[[], Any]):
        self.snapshot = snapshot

    def describe(self) -> list:
        return []  # collected lazily: registering must not touch Redis

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("segagent_queue_up", "1 when Redis answered this scrape")
        try:
            snap = self.snapshot()
        except Exception as exc:  # Redis down: say so instead of failing the whole scrape
            log.warning("queue metrics unavailable: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        for name, text, attr in (("segagent_queue_depth", "Jobs waiting in each queue", "queued"),
                                 ("segagent_queue_running", "Jobs being executed, by queue", "running"),
                                 ("segagent_queue_failed", "Failed jobs kept, by queue", "failed")):
            family = GaugeMetricFamily(name, text, labels=["queue"])
            for state in snap.queues:
                family.add_metric([state.name], float(getattr(state, attr)))
            yield family
        workers = GaugeMetricFamily("segagent_workers", "Live workers (heartbeat within 3 beats)")
        workers.add_metric([], float(len(snap.workers)))
        yield workers
