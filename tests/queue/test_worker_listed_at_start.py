"""A worker is listed by /health (its health hash) as soon as it starts beating, not half a heartbeat later."""
from __future__ import annotations

import types
import uuid

import redis

from segagent_backend.queue import status
from segagent_backend.queue.names import QueueNames
from segagent_backend.queue.worker import ResidentWorker


def test_a_worker_is_listed_as_soon_as_it_starts_beating(make_settings, redis_url):
    settings = make_settings(REDIS_URL=redis_url)
    names = QueueNames(f"start{uuid.uuid4().hex[:8]}")
    connection = redis.Redis.from_url(redis_url)
    host = types.SimpleNamespace(settings=settings, model_version="v-test", status="ready", reload_error=None,
                                 cache=type("Cache", (), {"nbytes": 0, "__len__": lambda self: 0})())
    worker = ResidentWorker([names.queue("interactive")], connection=connection,
                            context=types.SimpleNamespace(host=host), names=names, heartbeat=60)
    try:
        worker.start_beating()  # the first health beat would come 30 s later
        (listed,) = status.snapshot(connection, names).workers
        assert listed.name == worker.name and listed.model == "ready" and listed.model_version == "v-test"
    finally:
        worker.stop_beating()
        for key in connection.scan_iter(f"*{names.prefix}*"):
            connection.delete(key)
