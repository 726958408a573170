"""``segagent serve``: the backend under gunicorn, as ``make run`` starts it."""
from __future__ import annotations

import argparse
import os
import sys

from ..settings import Settings, SettingsError


def register(sub) -> None:
    """``segagent serve``."""
    p = sub.add_parser("serve", help="serve the backend with gunicorn")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, every interface)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: PORT, 9090)")
    p.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve with gunicorn (what ``make run`` does), from any working directory and any PATH."""
    settings = Settings.from_env()
    port = args.port or settings.port
    check_port_free(args.host, port)
    # this interpreter's own gunicorn (nothing looked up on PATH) and the app by module path
    # (nothing looked up in the working directory): `make run` works from a bare environment
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{args.host}:{port}", "--workers", str(settings.workers),
            "--threads", str(settings.threads), "--worker-class", "gthread", "--timeout", "300",
            "--access-logfile", "-", "segagent_backend.app:create_app()"]
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
