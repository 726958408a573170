"""``segagent train`` (fine-tune a policy on data you have) and ``segagent training`` (the service's rounds)."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..settings import Settings
from .arguments import parse_starts
from .errors import UsageError


def register(sub) -> None:
    """``segagent train`` and ``segagent training``."""
    p = sub.add_parser("train", help="fine-tune a SegAgent policy on trajectories, image+mask folders or a "
                                     "Label Studio export / project")
    p.add_argument("--data", action="append", default=[], metavar="PATH",
                   help="a trace JSON (SegAgent format; images from --images), a folder with images/ and masks/ "
                        "(+ manifest.json), or a Label Studio JSON export (with --label-config); repeatable")
    p.add_argument("--project", type=int, action="append", default=[], metavar="ID",
                   help="a Label Studio project pulled through the SDK (LABEL_STUDIO_URL/API_KEY); repeatable")
    p.add_argument("--images", metavar="DIR", help="folder holding the images trace files name")
    p.add_argument("--label-config", metavar="XML", help="the project's label config XML file (for a Label Studio export)")
    p.add_argument("--base", help="base policy: folder or hub id (default: SEGAGENT_POLICY)")
    p.add_argument("--out", required=True, help="output folder; the policy lands in OUT/model (rerun to resume)")
    p.add_argument("--method", choices=("lora", "full"),
                   help="lora adapters (merged when saved) or full fine-tuning (default: SEGAGENT_TRAIN_METHOD)")
    p.add_argument("--epochs", type=float, help="epochs over the samples (default: SEGAGENT_TRAIN_EPOCHS)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: SEGAGENT_TRAIN_LR)")
    p.add_argument("--batch", type=int, help="samples per training step (default: SEGAGENT_TRAIN_BATCH)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps (default: the epochs)")
    p.add_argument("--stop-samples", action=argparse.BooleanOptionalAction, default=None,
                   help="one stop sample per trajectory (the final mask, estimate alone); default: SEGAGENT_TRAIN_STOP_SAMPLES")
    p.add_argument("--star-rounds", type=int, help="StaR+ rounds after SFT (default: SEGAGENT_STAR_ROUNDS)")
    p.add_argument("--starts", type=parse_starts, default="empty", metavar="KIND,KIND",
                   help="trajectory start states for images+masks: some of empty (default), box, points")
    p.add_argument("--register", action="store_true", help="register OUT/model as a new version (not promoted)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("training", help="the service's training rounds: run one now, or list them")
    p.add_argument("action", choices=("run", "list"),
                   help="run: one round now (train, compare on held-out tasks, promote if better); "
                        "list: the rounds so far and how they ended")
    p.add_argument("--project", type=int, help="run: the Label Studio project (default: corrections of no project)")
    p.add_argument("--source", dest="data_from", choices=("corrections", "labelstudio"), default="corrections",
                   help="run: the recorded corrections (default) or every annotated task pulled from Label Studio")
    p.set_defaults(run=cmd_training)


def cmd_train(args: argparse.Namespace) -> int:
    from trainer.pipeline import train_policy

    from ..registry import Registry
    from ..wiring import finetune_config, loop_config, policy_spec
    from .models import check_checkpoint, load_tool

    settings = Settings.from_env()
    base = args.base or settings.policy
    if not base:
        raise UsageError("give --base (or set SEGAGENT_POLICY)")
    check_checkpoint(base, f"--base {base!r}" if args.base else f"SEGAGENT_POLICY={base!r}")
    segmenter = load_tool(settings)
    spec, loop = policy_spec(settings, base), loop_config(settings)
    sft, samples = load_training_data(args, settings, segmenter, spec.convention)
    print(f"{len(sft)} SFT samples from {len(samples)} image(s)")
    config = finetune_config(settings, method=args.method or None, epochs=args.epochs or None,
                             learning_rate=args.lr or None, batch_size=args.batch or None, max_steps=args.max_steps)
    rounds = settings.star_rounds if args.star_rounds is None else args.star_rounds
    outcome = train_policy(sft, spec, Path(args.out), config, loop=loop, star_rounds=rounds, samples=samples,
                           segmenter=segmenter)
    print(json.dumps(outcome.to_json(), indent=2))
    if args.register:
        info = Registry.from_settings(settings).register(outcome.model_dir, {
            "base": base, "data": {"paths": args.data, "projects": args.project},
            "counts": {"sft_samples": len(sft), "images": len(samples)},
            "metrics": {"training": outcome.to_json()["rounds"]}})
        print(f"registered version {info.version} (promote it with: segagent versions promote {info.version})")
    return 0


def load_training_data(args: argparse.Namespace, settings: Settings, segmenter, convention):
    """(SFT samples, the trainer Samples they came from) of every --data and --project."""
    from trainer.datasets import Sample, load_folder, read_rgb
    from trainer.samples import samples_from_trace
    from trainer.traces import read_traces
    from trainer.trajectories import generate_traces

    from ..labelstudio.annotations import corrections_from_tasks
    from ..learning import collect_corrections, load_samples
    from ..wiring import media_loader

    traced, fresh = [], []  # (trace, image) pairs read from trace files; samples that need trajectories
    media = media_loader(settings)
    for path in map(Path, args.data):
        if path.is_dir():
            manifest = path / "manifest.json"
            fresh += load_folder(path / "images", path / "masks", manifest if manifest.is_file() else None)
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise UsageError(f"--data {path}: neither a folder nor a JSON file ({exc})") from None
        if isinstance(data, list) and data and isinstance(data[0], dict) and "annotations" in data[0]:
            if not args.label_config:
                raise UsageError(f"{path} is a Label Studio export: give --label-config")
            corrections, rejected = corrections_from_tasks(data, Path(args.label_config).read_text(),
                                                           expression_field=settings.expression_field)
            fresh += _report_rejected(load_samples(media, corrections), rejected)
            continue
        if not args.images:
            raise UsageError(f"{path} is a trace file: give --images")
        traced += [(t, read_rgb(Path(args.images) / t.image_name)) for t in read_traces(path)]
    for project in args.project:
        corrections, rejected = collect_corrections(settings, project, "labelstudio")
        fresh += _report_rejected(load_samples(media, corrections), rejected)
    starts = args.starts
    stop = settings.train_stop_samples if args.stop_samples is None else args.stop_samples
    traces = generate_traces(segmenter, fresh, starts=starts, progress=True)
    sft = [x for trace, image in traced for x in samples_from_trace(trace, image, convention, None, stop,
                                                                            settings.release_protocol)]
    sft += [x for trace, s in zip(traces, [s for s in fresh for _ in starts])
            for x in samples_from_trace(trace, s.image, convention, None, stop, settings.release_protocol)]
    if not sft:
        raise UsageError("the data gave no training samples")
    samples = fresh + [Sample(t.image_name, image, t.gt, t.ignore if t.ignore is not None else np.zeros_like(t.gt),
                              (t.captions or [""])[0]) for t, image in traced]
    return sft, samples


def _report_rejected(loaded, rejected) -> list:
    samples, more = loaded
    for r in list(rejected) + list(more):
        print(f"skipped task {r.task_id} (annotation {r.annotation_id}): {r.reason}")
    return samples


def cmd_training(args: argparse.Namespace) -> int:
    from ..learning import list_reports, run_training, training_dir

    settings = Settings.from_env()
    if args.action == "list":
        reports = list_reports(settings)
        if not reports:
            print(f"no training rounds yet (in {training_dir(settings)}): start one with `segagent training run` "
                  f"or Start Training in Label Studio")
        for report in reports:
            print(f"{report.run}  project {report.project}  {report.status:9s} {report.version or '-':8s} {report.reason}")
        return 0
    if not settings.policy:
        raise UsageError("no base policy to fine-tune: set SEGAGENT_POLICY (a model folder or hub id)")
    if args.data_from == "labelstudio" and args.project is None:
        raise UsageError("--source labelstudio needs --project (the Label Studio project to pull)")
    from .models import check_checkpoint

    check_checkpoint(settings.policy, f"SEGAGENT_POLICY={settings.policy!r}")
    report = run_training(settings, args.project, args.data_from)
    print(json.dumps(asdict(report), indent=2))
    return 0 if report.status in ("promoted", "kept") else 1

