"""Argument helpers every command group shares: argv fixes, value parsers, output file checks."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .errors import UsageError

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


def parse_ids(text: str) -> list[int]:
    """``1,2,3`` -> [1, 2, 3] (task ids)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"task ids {text!r} must be integers separated by commas") from None


def parse_starts(text: str) -> tuple[str, ...]:
    """``empty,box,points`` -> ("empty", "box", "points") (trajectory start states)."""
    from trainer.trajectories import START_KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds or any(k not in START_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(f"starts {text!r}: give some of {','.join(START_KINDS)}, each once")
    return kinds


def add_project_arguments(parser: argparse.ArgumentParser, force_help: str) -> None:
    """``--project ID`` (required), ``--tasks ID,ID`` and ``--force``: how every command over a Label Studio
    project's tasks chooses them; ``force_help`` says what ``--force`` takes again."""
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--tasks", type=parse_ids, metavar="ID,ID", help="only these tasks (default: every task)")
    parser.add_argument("--force", action="store_true", help=force_help)
