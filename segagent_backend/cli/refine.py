"""``segagent refine``: the existing brush masks of a Label Studio project refined by the policy, through the
batch queue; workers post each refined mask as a prediction of model version ``refine-<version>``."""
from __future__ import annotations

import argparse

from ..settings import Settings, SettingsError
from .arguments import add_project_arguments
from .jobs import check_redis, report_plan


#: what ``segagent refine --help`` says the command does
DESCRIPTION = """\
Queue every task of a project for refinement: a worker starts the policy's episode from the task's latest
brush mask (of its predictions, or of its submitted annotations) and posts the refined mask, with its click
trajectory and score, as a prediction of model version refine-<version>. Tasks that already hold one are
skipped (run it again at will)."""


def register(sub) -> None:
    """``segagent refine``."""
    p = sub.add_parser("refine", help="queue a Label Studio project's brush masks to be refined by the policy",
                       description=DESCRIPTION)
    add_project_arguments(p, force_help="also tasks that already hold a refined prediction")
    p.add_argument("--from", dest="refine_from", choices=("predictions", "annotations"), default="predictions",
                   help="whose brush masks to refine (default: predictions)")
    p.add_argument("--model-version", metavar="V",
                   help="with --from predictions: only predictions of this model version (default: the latest "
                        "prediction that is not itself refined)")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="queue and return (default: follow the jobs with a progress bar; Ctrl-C stops only the bar)")
    p.set_defaults(run=cmd_refine)


def cmd_refine(args: argparse.Namespace) -> int:
    """Queue the project's tasks lacking a refined prediction of the current model version; workers post them."""
    from ..queue.planner import enqueue

    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("set REDIS_URL: workers on that Redis do the refining")
    check_redis(settings)
    plan = enqueue(settings, args.project, args.tasks, args.force,
                   refine={"from": args.refine_from, "source_version": args.model_version})
    return report_plan(settings, plan, args.wait)
