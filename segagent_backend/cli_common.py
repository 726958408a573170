"""What every ``segagent`` command shares: the error family main() reports in one line, and argv fixes.

A command never prints its own error and never calls ``sys.exit``: it raises, and ``cli.main``
prints ``segagent COMMAND: message`` on standard error and returns the error's exit status
(2 for a mistake the user can fix, 1 for a failure of something else, e.g. Redis away).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import RequestError
from .registry import RegistryError
from .settings import SettingsError


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


# Options whose value may start with "-": argparse would take "-5,10" for an option.
SIGNED_OPTIONS = ("--click", "--box")
_SIGNED_VALUE = re.compile(r"-\.?\d.*")


def join_signed_values(argv: Sequence[str], options: Iterable[str] = SIGNED_OPTIONS) -> list[str]:
    """``["--click", "-5,10"]`` -> ``["--click=-5,10"]`` so that argparse reads the value, not an option."""
    options, argv, out, i = tuple(options), list(argv), [], 0
    while i < len(argv):
        item = argv[i]
        if item == "--":  # everything after is positional
            return out + argv[i:]
        if item in options and i + 1 < len(argv) and _SIGNED_VALUE.fullmatch(argv[i + 1]):
            out.append(f"{item}={argv[i + 1]}")
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def check_output_file(path: Optional[str], option: str) -> None:
    """Refuse, before any work, an output file whose folder does not exist or that is a folder."""
    if path is None:
        return
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder, give a file name")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {str(parent)!r} does not exist")
