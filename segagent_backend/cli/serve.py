"""``segagent serve``: the backend under gunicorn, as ``make run`` starts it.

gunicorn's gthread worker hands every request to one of its ``--threads`` in arrival order. Requests
that run a model (or download a task image first) can hold a thread for seconds, so with all threads
busy Label Studio's /health (1 s timeout) used to queue behind them. Served by ``segagent serve``:

* the worker gets ``THREADS`` + :data:`LIGHT_THREADS` threads;
* :class:`Admission` lets at most ``THREADS`` requests other than the light routes (:data:`LIGHT_ROUTES`:
  /health, /, /metrics, /versions) into the app at once; one more is answered at once with a JSON 503
  "busy" and ``Retry-After`` (it never waits: a waiting request would hold one of the spare threads).

So at least :data:`LIGHT_THREADS` threads are always free for the light routes, which touch no lock a
model call holds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Callable, Iterable, Optional

from ..settings import Settings, SettingsError

#: threads each gunicorn worker gets beyond THREADS, kept free for the light routes
LIGHT_THREADS = 2
#: GET routes that never wait for a model or a download: always admitted
LIGHT_ROUTES = frozenset({"/", "/health", "/metrics", "/versions"})
#: seconds a caller turned away as busy is told to wait (``Retry-After``)
RETRY_AFTER = 1
#: routes named in the busy counter of /metrics (anything else counts as ``unmatched``)
_KNOWN_ROUTES = frozenset({"/predict", "/setup", "/webhook"})


def register(sub) -> None:
    """``segagent serve``."""
    p = sub.add_parser("serve", help="serve the backend with gunicorn")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, every interface)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: PORT, 9090)")
    p.set_defaults(run=cmd_serve)


#: the WSGI app gunicorn loads (by module path: nothing looked up in the working directory)
APP = "segagent_backend.cli.serve:application()"


def gunicorn_argv(settings: Settings, host: str, port: int, app: str = APP) -> list[str]:
    """The gunicorn command line ``segagent serve`` runs (``app``: another app factory, for tests)."""
    # this interpreter's own gunicorn (nothing looked up on PATH): `make run` works from a bare environment
    return [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(settings.workers),
            "--threads", str(settings.threads + LIGHT_THREADS), "--worker-class", "gthread", "--timeout", "300",
            "--access-logfile", "-", app]


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve with gunicorn (what ``make run`` does), from any working directory and any PATH."""
    settings = Settings.from_env()
    port = args.port or settings.port
    check_port_free(args.host, port)
    argv = gunicorn_argv(settings, args.host, port)
    os.execv(argv[0], argv)
    return 0  # not reached


def application(settings: Optional[Settings] = None, host=None):
    """The app gunicorn serves: ``app.create_app(settings, host)`` behind :class:`Admission` (``THREADS``
    model requests at once). An app whose ``create_app`` already installed an Admission is left as is."""
    from ..app import create_app

    settings = settings or Settings.from_env()
    app = create_app(settings, host)
    if not isinstance(app.wsgi_app, Admission):
        app.wsgi_app = Admission(app.wsgi_app, settings.threads, on_busy=_count_busy(app))
    return app


def _count_busy(app) -> Callable[[str, str], None]:
    metrics = app.config.get("SEGAGENT_METRICS")

    def count(path: str, method: str) -> None:
        if metrics is not None:
            route = path if path in _KNOWN_ROUTES else "unmatched"
            metrics.requests.labels(route, method if method in ("GET", "POST") else "other", "503").inc()

    return count


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


def check_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port that another process already listens on (gunicorn would retry for 5 s)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SettingsError(f"cannot serve on {host}:{port} ({exc.strerror}): "
                                f"set PORT (or --port) to a free port") from None
