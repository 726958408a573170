"""``segagent serve``: the backend under gunicorn, as ``make run`` starts it.

The app admits at most ``THREADS`` requests that may wait for a model or a download
(``segagent_backend.admission``); the worker gets ``THREADS`` + :data:`LIGHT_THREADS` threads, so at least
:data:`LIGHT_THREADS` are always free for /health and /metrics, which touch no lock a model call holds.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..settings import Settings, SettingsError

#: threads each gunicorn worker gets beyond THREADS, kept free for the light routes
LIGHT_THREADS = 2


def register(sub) -> None:
    """``segagent serve``."""
    p = sub.add_parser("serve", help="serve the backend with gunicorn")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, every interface)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: PORT, 9090)")
    p.set_defaults(run=cmd_serve)


#: gthread, reading each request whole in its main loop first: slow clients hold no thread
WORKER_CLASS = "segagent_backend.buffering_worker.BufferingThreadWorker"

#: the WSGI app gunicorn loads (by module path: nothing looked up in the working directory)
APP = "segagent_backend.app:create_app()"


def gunicorn_argv(settings: Settings, host: str, port: int, app: str = APP) -> list[str]:
    """The gunicorn command line ``segagent serve`` runs (``app``: another app factory, for tests)."""
    # this interpreter's own gunicorn (nothing looked up on PATH): `make run` works from a bare environment
    return [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", str(settings.workers),
            "--threads", str(settings.threads + LIGHT_THREADS), "--worker-class", WORKER_CLASS, "--timeout", "300",
            "--access-logfile", "-", app]


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve with gunicorn (what ``make run`` does), from any working directory and any PATH."""
    settings = Settings.from_env()
    port = args.port or settings.port
    check_port_free(args.host, port)
    argv = gunicorn_argv(settings, args.host, port)
    os.execv(argv[0], argv)
    return 0  # not reached


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
