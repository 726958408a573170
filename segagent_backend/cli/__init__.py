"""The ``segagent`` command: ``predict`` one episode locally, ``serve`` the backend, run a queue
``worker``, show the ``jobs``, ``preannotate`` a project, ``refine`` its masks, manage model ``versions``, make
``trajectories``, ``train`` a policy, run or list ``training`` rounds, ``eval`` the policy (cIoU, gIoU,
PRM quality) or the tool (NoC), ``audit`` a project's annotations, print the ``settings``.

One module per command group; each has ``register(subparsers)``. Every error ends in ``main``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import audit, eval, jobs, predict, refine, serve, settings, training, trajectories, versions
from .arguments import join_signed_values
from .errors import USER_ERRORS, exit_status, one_line, service_down

# in the order ``segagent --help`` lists them
COMMAND_GROUPS = (predict, serve, jobs, refine, audit, versions, trajectories, training, eval, settings)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option is ONE line (``segagent COMMAND: message (see ... --help)``), exit status 2,
    instead of the usage and the error on two or more lines. Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="segagent", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command. Every error ends here, in one way: ``segagent COMMAND: message`` on standard
    error, exit status 2 for a mistake of the user's (a service a setting names that does not answer included;
    1 for a failure once the work is under way);
    argparse's own errors exit 2 too. A closed standard output (``segagent settings | head``) ends quietly."""
    args = build_parser().parse_args(join_signed_values(sys.argv[1:] if argv is None else argv))
    prog = f"segagent {args.command}"
    try:
        status = args.run(args)
        sys.stdout.flush()  # inside the try: a reader that went away is noticed here, not at exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return 141  # what a shell reports for a process ended by SIGPIPE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"{prog}: {one_line(exc)}", file=sys.stderr)
        return exit_status(exc)
    except Exception as exc:
        down = service_down(exc)  # Redis or Label Studio not answering: the setting that names it
        if down is None:
            raise
        print(f"{prog}: {one_line(down)}", file=sys.stderr)
        return exit_status(down)


def _silence_stdout() -> None:
    """Point standard output at /dev/null so that the interpreter's final flush raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (pytest's capture)
        pass

