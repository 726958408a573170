"""``segagent trajectories``: SegAgent click trajectories (trace JSON) from an image folder + a mask folder.

    segagent trajectories --images DIR --masks DIR [--manifest JSON] [--limit N] --out traces.json
        [--segmenter grabcut|sam|hf-sam] [--sam-checkpoint PTH] [--sam-type T] [--sam-model ID] [--device D]
        [--starts empty,box,points] [--target-iou 0.98] [--max-clicks 20] [--seed 0]

The tool is configured like the service (``SEGAGENT_SEGMENTER``, ``SEGAGENT_SAM_*``, ``DEVICE``, ...);
the options above override those variables. Masks: ``<image stem>.png``, 0 = background,
128 = ignore band, other values = object (``trainer.datasets.load_folder``).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..agent.segmenters import SEGMENTERS
from ..settings import SAM_TYPES, Settings
from .arguments import parse_starts
from .errors import UsageError


def parse_target(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"target IoU {text!r} must be a number in (0, 1]")
    return value


def parse_positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return int(text)


def tool_settings(args: argparse.Namespace) -> Settings:
    """The service's settings (environment), this command's tool options in place of their
    variables (validated together), no policy."""
    overrides = {"SEGAGENT_SEGMENTER": args.segmenter, "SEGAGENT_SAM_CHECKPOINT": args.sam_checkpoint,
                 "SEGAGENT_SAM_TYPE": args.sam_type, "SEGAGENT_SAM_MODEL": args.sam_model, "DEVICE": args.device}
    env = {**os.environ, **{k: v for k, v in overrides.items() if v is not None}}
    return Settings.from_env(env).replace(policy=None)


def cmd_trajectories(args: argparse.Namespace) -> int:
    from trainer.datasets import load_folder
    from trainer.traces import write_traces
    from trainer.trajectories import final_iou, generate_traces

    from .models import load_tool

    settings = tool_settings(args)  # a SettingsError is reported by main()
    if args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a folder, give a file name")
    try:
        samples = load_folder(args.images, args.masks, args.manifest)
    except (ValueError, OSError) as exc:  # a listing of every bad file: kept whole
        raise UsageError(str(exc)) from None
    samples = samples[:args.limit]  # the first N in the manifest's order (else by image file name)
    tool = load_tool(settings)
    began = time.perf_counter()
    try:
        traces = generate_traces(tool, samples, args.starts, args.seed, args.target_iou, args.max_clicks,
                                 progress=args.progress)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    info = {"args": {"images": str(args.images), "masks": str(args.masks),
                     "manifest": None if args.manifest is None else str(args.manifest),
                     "limit": args.limit, "segmenter": settings.segmenter, "starts": list(args.starts), "target_iou": args.target_iou,
                     "max_clicks": args.max_clicks, "seed": args.seed},
            "generator": f"segagent-backend {__version__}"}
    write_traces(args.out, traces, info)
    clicks = sum(len(t.steps) for t in traces)
    mean = float(np.mean([final_iou(t) for t in traces])) if traces else float("nan")
    print(f"{len(traces)} traces ({len(samples)} images x {','.join(args.starts)}), {clicks} clicks, "
          f"mean final IoU {mean:.3f}, {time.perf_counter() - began:.1f} s -> {args.out}")
    return 0


def register(subparsers) -> None:
    """``segagent trajectories``."""
    p = subparsers.add_parser("trajectories", help="generate SegAgent click trajectories (trace JSON) from images + masks")
    p.add_argument("--images", type=Path, required=True, help="folder of images (JPEG/PNG/BMP/TIFF/WebP)")
    p.add_argument("--masks", type=Path, required=True,
                   help="folder of <image stem>.png masks: 0 background, 128 ignore band, other values object")
    p.add_argument("--manifest", type=Path,
                   help="JSON: rows {image, mask, expression|captions} (each path looked up under --images/--masks, "
                        "then relative to the manifest's folder; the rows choose the samples and their order) or "
                        "{name: expression} (every image of --images)")
    p.add_argument("--limit", type=parse_positive, metavar="N", help="only the first N samples (a quick run)")
    p.add_argument("--out", type=Path, required=True, help="trace file to write (SegAgent's trace JSON)")
    p.add_argument("--segmenter", choices=SEGMENTERS, help="the tool (default: SEGAGENT_SEGMENTER, else grabcut)")
    p.add_argument("--sam-checkpoint", help="segment-anything .pth (default: SEGAGENT_SAM_CHECKPOINT)")
    p.add_argument("--sam-type", choices=SAM_TYPES, help="default: SEGAGENT_SAM_TYPE (inferred when unset)")
    p.add_argument("--sam-model", help="transformers SAM hub id or folder (default: SEGAGENT_SAM_MODEL)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: DEVICE)")
    p.add_argument("--starts", type=parse_starts, default=("empty",), metavar="KIND,KIND",
                   help="start states, one trace each per image: empty (default), box (the tool on the mask's "
                        "box), points (the tool on a random point inside and one outside)")
    p.add_argument("--target-iou", type=parse_target, default=0.98, help="stop once IoU reaches this (0.98)")
    p.add_argument("--max-clicks", type=parse_positive, default=20, help="recorded clicks per trace at most (20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random start points (0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=cmd_trajectories)
