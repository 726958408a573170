"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 100.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "segagent_http_requests_total", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "segagent_http_request_seconds", "HTTP request latency by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter(
            "segagent_predictions_total", "Task predictions by outcome (ok, error)",
            ["outcome"], registry=self.registry)
        self.webhooks = Counter(
            "segagent_webhooks_total", "Webhook events by action", ["action"], registry=self.registry)
        self.cache_bytes = Gauge(
            "segagent_embedding_cache_bytes", "Bytes held by the per-image embedding cache", registry=self.registry)
        self.cache_entries = Gauge(
            "segagent_embedding_cache_entries", "Images held by the embedding cache", registry=self.registry)
        self.model_ready = Gauge(
            "segagent_model_ready", "1 when the model is loaded, 0 while loading or failed", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
