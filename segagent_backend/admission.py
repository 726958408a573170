"""At most ``THREADS`` requests that may wait for a model or a download inside the app at once.

gunicorn's gthread worker hands every request to one of its threads in arrival order. Requests that run a
model (or download a task image first) can hold a thread for seconds; with every thread taken, Label
Studio's /health (1 s timeout) would queue behind them. :class:`Admission` keeps the light routes
(:data:`LIGHT_ROUTES`, which take no model lock) always admitted and answers one request over the limit
at once with a JSON 503 "busy" and ``Retry-After`` (it never waits: a waiting request would hold a thread).
``segagent serve`` gives each worker spare threads beyond the limit for the light routes.
"""
from __future__ import annotations

import json
import threading
from typing import Callable, Iterable, Optional

#: GET routes that never wait for a model or a download: always admitted
LIGHT_ROUTES = frozenset({"/", "/health", "/metrics", "/versions", "/openapi.json"})
#: seconds a caller turned away as busy is told to wait (``Retry-After``)
RETRY_AFTER = 1


class Admission:
    """WSGI middleware: at most ``limit`` requests to routes other than :data:`LIGHT_ROUTES` inside the app
    at once (from before the body is read to the reply); one more gets a JSON 503 at once::

        {"error": "busy: ... retry in 1 s", "busy": true}   Retry-After: 1

    The light routes are always let through. ``on_busy(path, method)`` is told of each refusal."""

    def __init__(self, app: Callable, limit: int, retry_after: int = RETRY_AFTER,
                 on_busy: Optional[Callable[[str, str], None]] = None):
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.app, self.limit, self.retry_after, self.on_busy = app, limit, retry_after, on_busy
        self._slots = threading.BoundedSemaphore(limit)
        self._count_lock = threading.Lock()
        self.in_flight = 0  # requests admitted and not finished (a figure; the semaphore is the bound)
        self.refused = 0

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        if method in ("GET", "HEAD") and path in LIGHT_ROUTES:
            return self.app(environ, start_response)
        if not self._slots.acquire(blocking=False):
            with self._count_lock:
                self.refused += 1
            if self.on_busy is not None:
                self.on_busy(path, method)
            return self._busy(start_response)
        with self._count_lock:
            self.in_flight += 1
        try:
            # Flask builds its whole reply inside this call (nothing streams): the slot is free once it returns
            return self.app(environ, start_response)
        finally:
            with self._count_lock:
                self.in_flight -= 1
            self._slots.release()

    def _busy(self, start_response: Callable) -> list[bytes]:
        body = json.dumps({
            "error": f"busy: {self.limit} requests are being served by this worker; retry in {self.retry_after} s",
            "busy": True,
        }).encode()
        start_response("503 SERVICE UNAVAILABLE", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body))),
                                                   ("Retry-After", str(self.retry_after))])
        return [body]
