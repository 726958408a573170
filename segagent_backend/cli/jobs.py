"""``segagent worker``, ``jobs`` and ``preannotate``: the Redis queues (REDIS_URL) and what runs on them."""
from __future__ import annotations

import argparse
import json

from ..settings import Settings, SettingsError
from .arguments import add_project_arguments
from .errors import CommandFailed, service_down


def register(sub) -> None:
    """``segagent worker``, ``segagent jobs`` and ``segagent preannotate``."""
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
    add_project_arguments(p, force_help="also tasks that hold a prediction of this model version")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="queue and return (default: follow the jobs with a progress bar; Ctrl-C stops only the bar)")
    p.set_defaults(run=cmd_preannotate)


def parse_queues(text: str) -> tuple[str, ...]:
    """``interactive,batch`` -> ("interactive", "batch"): the order given is the priority order."""
    from ..queue.names import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"queues {text!r}: give some of {','.join(KINDS)} (priority order)")
    return kinds


def cmd_worker(args: argparse.Namespace) -> int:
    """A resident model worker: load the models once, then run jobs from the queues until stopped."""
    import logging

    from ..assembly import worker_context
    from ..queue.worker import run_worker

    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("set REDIS_URL: a worker runs the jobs queued on that Redis")
    if args.device:
        settings = settings.replace(device=args.device)
    check_redis(settings)  # before the models load: a Redis that does not answer is one line, exit status 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_worker(worker_context(settings), args.queues, args.name, args.burst)


def check_redis(settings: Settings) -> None:
    """ServiceDown (one line naming REDIS_URL) when Redis does not answer a PING."""
    import redis

    from ..queue.names import connect

    try:
        connect(settings.redis_url, settings.redis_timeout).ping()
    except redis.RedisError as exc:
        raise service_down(exc) from None


def cmd_jobs(args: argparse.Namespace) -> int:
    """Queue depths, running jobs, failed jobs with their reasons, and the live workers."""
    from dataclasses import asdict

    from ..queue import status
    from ..queue.names import QueueNames, connect

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
        raise service_down(exc) from None
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


def cmd_preannotate(args: argparse.Namespace) -> int:
    """Queue a project's tasks lacking a prediction of the current model version; workers post them."""
    from ..queue.planner import enqueue

    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("set REDIS_URL: workers on that Redis do the predicting")
    check_redis(settings)
    return report_plan(settings, enqueue(settings, args.project, args.tasks, args.force), args.wait)


def report_plan(settings: Settings, plan, wait: bool) -> int:
    """Print a queued plan's summary as one JSON line (after following its jobs when ``wait``): tasks
    written, skipped and failed, with the first reasons. CommandFailed (one line on standard error naming
    the first reasons, exit status 1) when a task failed."""
    from ..queue.planner import follow

    summary = {k: v for k, v in plan.to_json().items() if k not in ("jobs", "job_tasks")} | {"jobs": len(plan.jobs)}
    if wait and plan.jobs:
        state = follow(settings, plan)
        summary |= {"tasks_written": state.tasks_written, "tasks_skipped": state.tasks_skipped,
                    "tasks_failed": state.tasks_failed, "tasks_done": state.tasks_done,
                    "failures": state.failures, "skips": state.skips}
    print(json.dumps(summary))
    if summary.get("tasks_failed"):
        first = "; ".join(f"task {f['task']}: {f['reason']}" for f in summary["failures"][:3])
        # main() prints it as `segagent COMMAND: ...` on standard error, exit status 1
        raise CommandFailed(f"{summary['tasks_failed']} of {len(plan.queued)} task(s) failed, nothing was written "
                            f"for them; first: {first}")
    return 0
