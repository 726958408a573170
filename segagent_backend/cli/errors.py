"""The CLI's errors: main() reports each as ``segagent COMMAND: message`` on standard error, in one line.

A command never prints its own error and never calls ``sys.exit``: it raises. ``UsageError`` is THE
user's mistake (an option, a file, a setting): exit status 2; the library's own "bad input" errors
(``USER_ERRORS``) count as one too, and so does a service a setting names that does not answer
(``ServiceDown``: Redis at REDIS_URL, Label Studio at LABEL_STUDIO_URL; ``service_down`` turns the
client libraries' connection errors into one). ``CommandFailed`` is a failure of something else once the
work is under way (Label Studio refusing a prediction, a file that cannot be written, tasks that
failed): exit status 1.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from ..errors import RequestError
from ..registry import RegistryError
from ..settings import SettingsError


class CliError(Exception):
    """Reported by ``cli.main`` as one line; ``status`` is the exit status."""

    status = 2


class UsageError(CliError):
    """A mistake the user can fix (an option, a file, a setting): exit status 2."""


class ServiceDown(UsageError):
    """A service a setting names (REDIS_URL, LABEL_STUDIO_URL) does not answer: start it or fix the setting
    (exit status 2)."""


class CommandFailed(CliError):
    """The command could not do its work for a reason outside the user's input: exit status 1."""

    status = 1


# Raised for something the user gave us (an option, an input file, a setting): one line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CliError, RequestError, SettingsError, RegistryError, FileNotFoundError, PermissionError,
    IsADirectoryError, NotADirectoryError,
)


def one_line(exc: BaseException) -> str:
    """The exception as one line: ``FILE: reason`` for a file error, else its message's first line
    (a message listing several problems keeps its lines)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, (CliError, RequestError)) else text.splitlines()[0]


def exit_status(exc: BaseException) -> int:
    return exc.status if isinstance(exc, CliError) else 2


_USERINFO = re.compile(r"(://)[^/@]*@")


def shown_url(url: str) -> str:
    """A URL without its ``user:password@`` (a Redis URL may carry a password)."""
    return _USERINFO.sub(r"\1***@", url)


def service_down(exc: BaseException) -> Optional[ServiceDown]:
    """A connection error from Redis or from an HTTP service as ONE line naming the setting to check,
    else None. Only the client libraries already imported are consulted (nothing is imported here)."""
    import sys

    redis = sys.modules.get("redis")
    if redis is not None and isinstance(exc, redis.RedisError):
        url = shown_url(os.environ.get("REDIS_URL", "") or "(REDIS_URL unset)")
        return ServiceDown(f"Redis at REDIS_URL={url} does not answer ({_first_line(exc)}): start it, or fix REDIS_URL")
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TransportError):
        try:
            where = f"{exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        except (RuntimeError, AttributeError):
            where = ""
        label_studio = os.environ.get("LABEL_STUDIO_URL", "").rstrip("/")
        reason = _first_line(exc) or type(exc).__name__
        if label_studio and (not where or label_studio.startswith(where) or where.startswith(label_studio)):
            return ServiceDown(f"Label Studio at LABEL_STUDIO_URL={shown_url(label_studio)} does not answer "
                               f"({reason}): start it, or fix LABEL_STUDIO_URL")
        return ServiceDown(f"{shown_url(where) or 'a server'} does not answer ({reason})")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
