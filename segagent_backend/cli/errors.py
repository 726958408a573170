"""The CLI's errors: main() reports each as ``segagent COMMAND: message`` on standard error, in one line.

A command never prints its own error and never calls ``sys.exit``: it raises. ``UsageError`` is THE
user's mistake (an option, a file, a setting): exit status 2; the library's own "bad input" errors
(``USER_ERRORS``) count as one too. ``CommandFailed`` is a failure of something else (Redis away, a
file that cannot be written): exit status 1.
"""
from __future__ import annotations

from ..errors import RequestError
from ..registry import RegistryError
from ..settings import SettingsError


class CliError(Exception):
    """Reported by ``cli.main`` as one line; ``status`` is the exit status."""

    status = 2


class UsageError(CliError):
    """A mistake the user can fix (an option, a file, a setting): exit status 2."""


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
