"""The ``segagent`` command: ``predict`` one episode locally, ``serve`` the backend, run a queue
``worker``, show the ``jobs``, ``preannotate`` a project, manage model ``versions``, make
``trajectories``, ``train`` a policy, run or list ``training`` rounds, print the ``settings``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from . import cli_training, cli_trajectories
from .agent.types import Box, Click, EpisodeResult
from .errors import RequestError
from .registry import Registry, RegistryError
from .settings import Settings, SettingsError, settings_table


def parse_click(text: str) -> Click:
    """``X,Y[,+|-]`` (pixels, x = column) -> Click; the sign defaults to positive."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("+", "-")):
        raise argparse.ArgumentTypeError(f"click {text!r} must be X,Y or X,Y,+ or X,Y,-")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"click {text!r}: X and Y must be numbers") from None
    return Click(x, y, len(parts) == 2 or parts[2] == "+")


def parse_box(text: str) -> Box:
    """``X1,Y1,X2,Y2`` (pixels) -> Box."""
    try:
        x1, y1, x2, y2 = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r} must be X1,Y1,X2,Y2") from None
    return Box(x1, y1, x2, y2)


def coco_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools' compressed form)."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def episode_json(image: np.ndarray, episode: EpisodeResult, expression: Optional[str], model_version: str) -> dict:
    from .labelstudio.config import EXAMPLE_CONFIG, parse_label_config

    height, width = image.shape[:2]
    config = parse_label_config(EXAMPLE_CONFIG)
    clicks = [step.click for step in episode.trajectory]
    result = [config.brush.region(episode.mask, config.brush.label_for(None), config.image_name, episode.score)]
    result += config.trajectory.regions(clicks, config.image_name, width, height)
    return {
        "width": width,
        "height": height,
        "expression": expression,
        "model_version": model_version,
        "mask": coco_rle(episode.mask),
        "score": episode.score,
        "box": None if episode.box is None else [episode.box.x1, episode.box.y1, episode.box.x2, episode.box.y2],
        "trajectory": [
            {"x": s.click.x, "y": s.click.y, "positive": s.click.positive, "iou_estimate": s.iou_estimate}
            for s in episode.trajectory
        ],
        "malformed_answers": episode.malformed,
        "stop_reason": episode.stop_reason,
        "result": result,
    }


def draw_png(image: np.ndarray, episode: EpisodeResult, path: str) -> None:
    """The mask (green, alpha 0.5), the box and the clicks (green +, red -, numbered) over the image."""
    import cv2

    from .agent.overlay import overlay_mask

    canvas = cv2.cvtColor(overlay_mask(image, episode.mask), cv2.COLOR_RGB2BGR)
    radius = max(3, round(max(image.shape[:2]) / 120))
    if episode.box is not None:
        b = episode.box
        cv2.rectangle(canvas, (round(b.x1), round(b.y1)), (round(b.x2), round(b.y2)), (255, 160, 0), 2)
    for n, step in enumerate(episode.trajectory, 1):
        centre = (round(step.click.x), round(step.click.y))
        color = (0, 200, 0) if step.click.positive else (0, 0, 230)
        cv2.circle(canvas, centre, radius, color, -1)
        cv2.circle(canvas, centre, radius, (255, 255, 255), 1)
        cv2.putText(canvas, str(n), (centre[0] + radius, centre[1] - radius), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 + radius / 30, (255, 255, 255), 1, cv2.LINE_AA)
    if not cv2.imwrite(path, canvas):
        raise OSError(f"could not write {path}")


def cmd_predict(args: argparse.Namespace) -> int:
    from .media import load_image_file
    from .predictor import Predictor

    from .agent.loop import EpisodeRequest

    settings = Settings.from_env().replace(preload=False)
    use_policy = bool(args.expression and settings.policy and (not args.click or settings.refine))
    if not use_policy and not args.click and args.box is None:
        raise RequestError("give --click and/or --box, or --expression with a SegAgent policy (SEGAGENT_POLICY)")
    image = load_image_file(args.image, settings.max_image_pixels)
    predictor = Predictor(settings)
    if use_policy:  # the same path as automatic predictions: the policy clicks, the tool segments
        episode = predictor.run_policy([EpisodeRequest(image, args.expression, args.box, args.click)])[0]
    else:
        episode = predictor.run_episode(image, args.click, args.box)
    payload = episode_json(image, episode, args.expression, predictor.model_version)
    text = json.dumps(payload)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    else:
        print(text)
    if args.png:
        draw_png(image, episode, args.png)
    return 0


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
        raise SettingsError("segagent worker needs REDIS_URL (the Redis the web process queues jobs on)")
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
        raise SettingsError("segagent jobs needs REDIS_URL")
    import redis

    conn, names = connect(settings.redis_url, settings.redis_timeout), QueueNames(settings.queue_prefix)
    try:
        snap = status.snapshot(conn, names)
        running = status.running_jobs(conn, names)
        failed = status.failed_jobs(conn, names, args.failed)
    except redis.RedisError as exc:
        print(f"segagent: Redis at {settings.redis_url} is unreachable: {exc}", file=sys.stderr)
        return 1
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
        raise SettingsError("segagent preannotate needs REDIS_URL (workers do the predicting)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="run one episode on a local image and write JSON (and a PNG)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--expression", help="referring expression: with SEGAGENT_POLICY set the policy clicks")
    p.add_argument("--click", type=parse_click, action="append", default=[], metavar="X,Y,+|-",
                   help="a click in pixels (x = column), + positive (default) or - negative; repeat in order")
    p.add_argument("--box", type=parse_box, metavar="X1,Y1,X2,Y2", help="a box prompt in pixels")
    p.add_argument("--json", help="write the JSON here instead of standard output")
    p.add_argument("--png", help="draw the mask and the clicks over the image into this PNG")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser("serve", help="serve the backend with gunicorn")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=None, help="default: PORT")
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
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_jobs)

    p = sub.add_parser("preannotate", help="queue a Label Studio project's tasks for predictions posted by workers")
    p.add_argument("--project", type=int, required=True, help="Label Studio project id")
    p.add_argument("--tasks", type=parse_ids, metavar="ID,ID", help="only these tasks (default: every task)")
    p.add_argument("--force", action="store_true", help="also tasks that hold a prediction of this model version")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="queue and return (default: follow the jobs with a progress bar; Ctrl-C stops only the bar)")
    p.set_defaults(run=cmd_preannotate)

    p = sub.add_parser("versions", help="list, register, promote or roll back model versions (MODEL_DIR/versions)")
    p.add_argument("action", choices=("list", "promote", "rollback", "register"))
    p.add_argument("target", nargs="?", help="promote: VERSION; register: PATH of a trained policy folder")
    p.add_argument("--meta", help="register: metadata JSON (base, data, counts, metrics, parent)")
    p.add_argument("--version", help="register: the version name (default: v<N+1>)")
    p.add_argument("--move", action="store_true", help="register: move the folder in instead of copying it")
    p.set_defaults(run=cmd_versions)

    cli_trajectories.add_parser(sub)

    cli_training.add_parsers(sub)

    p = sub.add_parser("settings", help="print the settings table (Markdown)")
    p.set_defaults(run=lambda a: print(settings_table()) or 0)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (RequestError, SettingsError, RegistryError) as exc:
        print(f"segagent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
