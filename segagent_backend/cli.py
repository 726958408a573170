"""The ``segagent`` command: ``predict`` one episode locally, ``serve`` the backend, run a queue
``worker``, show the ``jobs``, ``preannotate`` a project, manage model ``versions``, make
``trajectories``, ``train`` a policy, run or list ``training`` rounds, print the ``settings``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from . import cli_predict, cli_training, cli_trajectories
from .cli_common import USER_ERRORS, CommandFailed, exit_status, join_signed_values, one_line
from .registry import Registry, RegistryError
from .settings import Settings, SettingsError, settings_table


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


def parse_queues(text: str) -> tuple[str, ...]:
    """``interactive,batch`` -> ("interactive", "batch"): the order given is the priority order."""
    from .queue.names import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"queues {text!r}: give some of {','.join(KINDS)} (priority order)")
    return kinds


def cmd_worker(args: argparse.Namespace) -> int:
    """A resident model worker: load the models once, then run jobs from the queues until stopped."""
    import logging

    from .queue.worker import run_worker

    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("set REDIS_URL: a worker runs the jobs queued on that Redis")
    if args.device:
        settings = settings.replace(device=args.device)
    settings = settings.replace(preload=False)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_worker(settings, args.queues, args.name, args.burst)


def cmd_jobs(args: argparse.Namespace) -> int:
    """Queue depths, running jobs, failed jobs with their reasons, and the live workers."""
    from dataclasses import asdict

    from .queue import status
    from .queue.names import QueueNames, connect

    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("set REDIS_URL: the jobs are queued on that Redis")
    import redis

    conn, names = connect(settings.redis_url, settings.redis_timeout), QueueNames(settings.queue_prefix)
    try:
        snap = status.snapshot(conn, names)
        running = status.running_jobs(conn, names)
        failed = status.failed_jobs(conn, names, args.failed)
    except redis.RedisError as exc:
        raise CommandFailed(f"Redis at {settings.redis_url} is unreachable: {exc}") from None
    if args.json:
        print(json.dumps({"queues": [asdict(q) for q in snap.queues], "workers": [asdict(w) for w in snap.workers],
                          "running": [{"queue": q, "id": j, "worker": w} for q, j, w in running],
                          "failed": [asdict(f) for f in failed]}))
        return 0
    print(f"{'queue':<28}{'queued':>8}{'running':>9}{'failed':>8}")
    for q in snap.queues:
        print(f"{q.name:<28}{q.queued:>8}{q.running:>9}{q.failed:>8}")
    print(f"\nworkers: {len(snap.workers)}")
    for w in snap.workers:
        print(f"  {w.name} on {w.host} [{w.device}] {w.model_version} ({w.model}), queues {w.queues}, "
              f"{w.jobs_done} jobs, cache {w.cache_entries} images / {w.cache_bytes} B")
    print(f"\nrunning: {len(running)}")
    for q, j, w in running:
        print(f"  {j} on {q} by {w}")
    print(f"\nfailed (latest {args.failed} per queue): {len(failed)}")
    for f in failed:
        print(f"  {f.id} on {f.queue} at {f.ended_at}: {f.reason}")
    return 0


def parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"task ids {text!r} must be integers separated by commas") from None


def cmd_preannotate(args: argparse.Namespace) -> int:
    """Queue a project's tasks lacking a prediction of the current model version; workers post them."""
    from .queue.preannotate import enqueue, follow

    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("set REDIS_URL: workers on that Redis do the predicting")
    plan = enqueue(settings, args.project, args.tasks, args.force)
    summary = {k: v for k, v in plan.to_json().items() if k not in ("jobs", "job_tasks")} | {"jobs": len(plan.jobs)}
    if args.wait and plan.jobs:
        state = follow(settings, plan)
        summary |= {"tasks_done": state.tasks_done, "tasks_failed": state.tasks_failed}
    print(json.dumps(summary))
    return 1 if summary.get("tasks_failed") else 0


def cmd_versions(args: argparse.Namespace) -> int:
    """list | promote VERSION | rollback | register PATH: JSON on standard output."""
    from dataclasses import asdict

    registry = Registry.from_settings(Settings.from_env())
    if args.action == "list":
        current = registry.current()
        print(json.dumps({"current": current.version, "history": list(current.history),
                          "versions": [asdict(m) for m in registry.list_versions()]}, indent=2))
        return 0
    if args.action == "register":
        if not args.target:
            raise RegistryError("register needs the PATH of a trained policy folder")
        try:
            meta = json.loads(args.meta) if args.meta else {}
        except ValueError as exc:
            raise RegistryError(f"--meta is not JSON: {exc}") from None
        if not isinstance(meta, dict):
            raise RegistryError("--meta must be a JSON object")
        if args.version:
            meta["version"] = args.version
        print(json.dumps(asdict(registry.register(args.target, meta, move=args.move))))
        return 0
    if args.action == "promote":
        if not args.target:
            raise RegistryError("promote needs a VERSION")
        current = registry.promote(args.target)
    else:
        current = registry.rollback()
    print(json.dumps(current.to_json()))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """The settings table; the environment is checked first, so a bad value is reported, not printed."""
    Settings.from_env()
    print(settings_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")

    cli_predict.add_parser(sub)

    p = sub.add_parser("serve", help="serve the backend with gunicorn")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: 0.0.0.0, every interface)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: PORT, 9090)")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("worker", help="run a resident model worker on the Redis queues (REDIS_URL)")
    p.add_argument("--queues", type=parse_queues, default=("interactive", "batch", "train"), metavar="Q1,Q2",
                   help="queues to serve, highest priority first (default: interactive,batch,train)")
    p.add_argument("--device", help="pin the models to this device (cpu, cuda, cuda:N); default: DEVICE")
    p.add_argument("--name", help="worker name prefix (default: segagent-HOST-PID)")
    p.add_argument("--burst", action="store_true", help="quit once the queues are empty")
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("jobs", help="show queue depths, running and failed jobs and the live workers")
    p.add_argument("--failed", type=int, default=20, metavar="N", help="show at most N failures per queue")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(run=cmd_jobs)

    p = sub.add_parser("preannotate", help="queue a Label Studio project's tasks for predictions posted by workers")
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--tasks", type=parse_ids, metavar="ID,ID", help="only these tasks (default: every task)")
    p.add_argument("--force", action="store_true", help="also tasks that hold a prediction of this model version")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="queue and return (default: follow the jobs with a progress bar; Ctrl-C stops only the bar)")
    p.set_defaults(run=cmd_preannotate)

    p = sub.add_parser("versions", help="list, register, promote or roll back model versions (MODEL_DIR/versions)")
    p.add_argument("action", choices=("list", "promote", "rollback", "register"),
                   help="list the versions, promote VERSION, roll back to the previous one, or register PATH")
    p.add_argument("target", nargs="?", help="promote: VERSION; register: PATH of a trained policy folder")
    p.add_argument("--meta", help="register: metadata JSON (base, data, counts, metrics, parent)")
    p.add_argument("--version", help="register: the version name (default: v<N+1>)")
    p.add_argument("--move", action="store_true", help="register: move the folder in instead of copying it")
    p.set_defaults(run=cmd_versions)

    cli_trajectories.add_parser(sub)

    cli_training.add_parsers(sub)

    p = sub.add_parser("settings", help="check the environment, then print the settings table (Markdown)")
    p.set_defaults(run=cmd_settings)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command. Every error ends here, in one way: ``segagent COMMAND: message`` on standard
    error, exit status 2 for a mistake of the user's (1 for a failure elsewhere, e.g. Redis away);
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


def _silence_stdout() -> None:
    """Point standard output at /dev/null so that the interpreter's final flush raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (pytest's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
