"""``segagent eval``: the paper's evaluation of the policy (cIoU, gIoU, IoU per step, PRM quality) or of the tool (NoC).

    segagent eval --refs refcoco_val.json --images DIR --out DIR [--protocol release|extended] [--limit N]
                  [--release-scoring]
    segagent eval --manifest manifest.json [--images DIR] [--masks DIR] --out DIR [--protocol ...] [--limit N]
    segagent eval --noc --manifest manifest.json --out DIR [--limit N]
    segagent eval --predictions predictions.json --out DIR [--release-scoring]
                  (score SegAgent-layout predictions, ours or the release's)

``--release-scoring`` scores as the release's evaluator does: at most the first 5000 sentences (objects whose
image name holds ".png" skipped), samples whose episode made no click dropped; the summary keeps our scores
(every sample) beside it and states which one heads it and how many samples each counted. ``--noc`` clicks
through the service's click path (the clicks as Label Studio sends them, replayed as the model host
replays them for ``/predict``), so its NoC is what annotators get.

The policy and the tool come from the service's settings (``SEGAGENT_POLICY``, ``SEGAGENT_POLICY_KIND``,
``SEGAGENT_SEGMENTER``, ``SEGAGENT_SAM_*``, ``DEVICE``, ``SEGAGENT_MAX_STEPS``, ...); ``--protocol`` and
``--max-steps`` override their variables. Files written: ``trainer/eval_report.py``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..agent.loop import PROTOCOLS
from ..settings import Settings
from .errors import UsageError


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return int(text)


#: what ``segagent eval --help`` says the command does
DESCRIPTION = """\
Evaluate the SegAgent policy with the interactive tool on referring-segmentation data (cIoU, gIoU, IoU per
step, the PRM's estimate against the true IoU), or the tool alone with the standard click simulator (--noc:
NoC@85/90). Writes CSV, JSON and a PNG plot into --out. Every sample is used unless --limit (or
--release-scoring: the release's first 5000 sentences) is given."""


def register(sub) -> None:
    """``segagent eval``."""
    p = sub.add_parser("eval", help="evaluate the policy (cIoU, gIoU, per-step IoU, PRM quality) or the tool (--noc)",
                       description=DESCRIPTION)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--refs", type=Path, metavar="JSON",
                      help="referring-segmentation data in the RefCOCO/SegAgent layout ({\"data\": [{image_name, "
                           "height, width, gt_ann: {caption: [...], segmentation: RLE or polygons}}]}); each "
                           "sentence is one sample")
    data.add_argument("--manifest", type=Path, metavar="JSON",
                      help="an image + mask folder's manifest: rows {image, mask, expression|captions} (e.g. the "
                           "GrabCut set's manifest.json) or {image name: expression}")
    data.add_argument("--predictions", type=Path, metavar="JSON",
                      help="score a prediction file in SegAgent's layout (records with gt_mask and pred_list, as "
                           "this command or the release's evaluation writes them) with the release's mask "
                           "selection: cIoU, gIoU (no model loads)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="the images folder (required with --refs; default with --manifest: the manifest's folder)")
    p.add_argument("--masks", type=Path, metavar="DIR",
                   help="with --manifest: the masks folder (default: the images folder); 0 background, "
                        "128 ignore band, other values object")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created) for CSV, JSON, PNG")
    p.add_argument("--noc", action="store_true",
                   help="NoC of the tool alone: the standard simulator, 20 clicks per object, ignore band excluded "
                        "(no policy needed)")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="the loop's rules: release (the paper's evaluation code: fixed steps, its mask selection) "
                        "or extended (PRM stop, patience, tree search); default: SEGAGENT_PROTOCOL")
    p.add_argument("--max-steps", type=_positive, metavar="N", help="policy clicks per episode (default: SEGAGENT_MAX_STEPS)")
    p.add_argument("--limit", type=_positive, metavar="N", help="only the first N samples (a quick run)")
    p.add_argument("--release-scoring", action="store_true",
                   help="score as the release's evaluator: the first 5000 sentences (objects with a .png image "
                        "skipped), samples whose episode made no click dropped; our scores (every sample) are "
                        "reported beside it"),
    p.add_argument("--batch", type=_positive, default=8, metavar="N",
                   help="episodes run in lockstep, one batched policy call per step (default 8)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=cmd_eval)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"SEGAGENT_PROTOCOL": args.protocol,
                 "SEGAGENT_MAX_STEPS": None if args.max_steps is None else str(args.max_steps)}
    return Settings.from_env({**os.environ, **{k: v for k, v in overrides.items() if v is not None}})


def _check_paths(args: argparse.Namespace) -> None:
    """Every input and the output folder, before any work: one line each."""
    option, path = next((f"--{k}", v) for k, v in (("refs", args.refs), ("manifest", args.manifest),
                                                       ("predictions", args.predictions)) if v is not None)
    if not path.is_file():
        raise UsageError(f"{option} {path}: no such file")
    if args.predictions is not None and (args.noc or args.images or args.masks):
        raise UsageError("--predictions is scored alone: no --noc, --images or --masks")
    if args.noc and args.release_scoring:
        raise UsageError("--release-scoring scores a policy's episodes; --noc evaluates the tool alone")
    if args.refs is not None and args.images is None:
        raise UsageError("--refs needs --images DIR (the folder its image_name entries are in)")
    if args.refs is not None and args.masks is not None:
        raise UsageError("--masks goes with --manifest; --refs carries its masks")
    for option, folder in (("--images", args.images), ("--masks", args.masks)):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"{option} {folder}: no such folder")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a file, give a folder")


def _progress(args: argparse.Namespace, what: str):
    if not args.progress:
        return None, None
    from tqdm import tqdm

    bar = tqdm(desc=what, unit="sample")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return update, bar


def _manifest_samples(args: argparse.Namespace, limit):
    from trainer.datasets import load_folder

    images = args.images or args.manifest.parent
    try:
        samples = load_folder(images, args.masks or images, args.manifest)
    except (ValueError, OSError) as exc:  # a listing of every bad file: kept whole
        raise UsageError(str(exc)) from None
    return samples[:limit]


def _ref_entries(args: argparse.Namespace, limit, skip_png: bool = False):
    from trainer.refseg import read_refs

    try:
        return read_refs(args.refs, limit, skip_png)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_eval(args: argparse.Namespace) -> int:
    _check_paths(args)
    if args.predictions is not None:
        return _score(args)
    settings = _settings(args)  # a SettingsError is reported by main()
    return _noc(args, settings) if args.noc else _policy_eval(args, settings)


def _score(args: argparse.Namespace) -> int:
    from trainer.eval_report import write_scores
    from trainer.refseg import read_predictions, score_predictions

    from trainer.eval_run import RELEASE_MAX_SAMPLES

    try:
        records = read_predictions(args.predictions)
        total = len(records)
        if args.release_scoring:
            records = records[:RELEASE_MAX_SAMPLES]
        records = records[:args.limit]
        scores = score_predictions(records, release=args.release_scoring)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UsageError(f"{args.predictions}: not SegAgent predictions: {exc}") from None
    scoring = "release" if args.release_scoring else "ours"
    write_scores(records, scores, args.out, str(args.predictions), scoring, total)
    print(f"{len(records)} of {total} records, {scoring} scoring, {scores['samples']} scored, {scores['dropped']} "
          f"dropped (no click) (the release's mask selection): cIoU {100 * scores['ciou']:.2f}  "
          f"gIoU {100 * scores['giou']:.2f} -> {args.out}")
    return 0


def _noc(args: argparse.Namespace, settings: Settings) -> int:
    from trainer.eval_report import noc_summary, write_noc
    from trainer.evaluation import run_noc_set
    from trainer.refseg import load_ref_sample

    from .models import load_tool

    if args.refs is not None:  # one sample per object: its sentences share the mask
        objects = [e for e in _ref_entries(args, None) if e.sentence == 0][:args.limit]
        try:
            samples = [load_ref_sample(e, args.images) for e in objects]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        samples = _manifest_samples(args, args.limit)
    tool = load_tool(settings.replace(policy=None))
    update, bar = _progress(args, "noc")
    began = time.perf_counter()
    runs = run_noc_set(tool, samples, 20, update)
    if bar is not None:
        bar.close()
    summary = noc_summary(runs, 20, time.perf_counter() - began)
    summary.update(segmenter=settings.segmenter, data=str(args.refs or args.manifest),
                   click_path="service: Label Studio percent clicks replayed as the model host replays them")
    write_noc(runs, args.out, summary)
    miou = summary["miou_after_click"]
    print(f"{len(runs)} images, {settings.segmenter}, 20 clicks: NoC@85 {summary['noc85']:.2f}  NoC@90 {summary['noc90']:.2f}")
    print("mean IoU after k clicks: " + "  ".join(f"{k}: {miou[k - 1]:.3f}" for k in (1, 2, 3, 5, 10, 20)))
    print(f"clicks that lowered IoU: {summary['iou_drops']} (on {summary['samples_with_drops']} images); "
          f"{summary['s_per_click']:.3f} s per click -> {args.out}")
    return 0


def _policy_eval(args: argparse.Namespace, settings: Settings) -> int:
    from trainer.eval_report import write_eval
    from trainer.eval_run import RELEASE_MAX_SAMPLES, evaluate, items_from_refs, items_from_samples

    from ..agent.loading import ModelLoadError
    from ..wiring import policy_from_settings
    from .models import check_checkpoint, load_failure, load_tool, quiet_load_errors

    release_scoring = args.release_scoring
    cut = RELEASE_MAX_SAMPLES if release_scoring else None
    if args.refs is not None:
        entries = _ref_entries(args, None, skip_png=release_scoring)
        truncated = max(len(entries) - cut, 0) if cut else 0
        entries = entries[:cut][:args.limit]
        missing = sorted({e.image_name for e in entries if not _image_exists(args.images, e.image_name)})
        if missing:
            raise UsageError(f"{len(missing)} image(s) of {args.refs} not in {args.images}, e.g. {missing[0]}")
        items = items_from_refs(entries, args.images)
    else:
        try:
            items = items_from_samples(_manifest_samples(args, None))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        truncated = max(len(items) - cut, 0) if cut else 0
        items = items[:cut][:args.limit]
    if not settings.policy:
        raise UsageError("no policy to evaluate: set SEGAGENT_POLICY (a model folder or hub id); --noc evaluates the tool alone")
    check_checkpoint(settings.policy, f"SEGAGENT_POLICY={settings.policy!r}")
    tool = load_tool(settings)
    with quiet_load_errors():
        try:
            policy = policy_from_settings(settings, settings.policy)
        except (ModelLoadError, ValueError, OSError) as exc:
            raise load_failure(f"SEGAGENT_POLICY={settings.policy!r}", str(exc)) from None
    config = settings.loop_config()
    start = _text_start(settings, policy, config.release)
    update, bar = _progress(args, "eval")
    try:
        run = evaluate(policy, tool, items, config, args.batch, update, start,
                       "release" if release_scoring else "ours", truncated)
    except ValueError as exc:  # an entry whose image or mask does not fit (checked as it loads)
        raise UsageError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    info = {"data": str(args.refs or args.manifest), "policy": settings.policy, "policy_kind": settings.policy_kind,
            "segmenter": settings.segmenter, "text_model": settings.text_model,
            "decoding": getattr(policy, "decoding", settings.decoding_mode)}
    s = write_eval(run, args.out, info)
    prm = s["prm"]
    ours, release = s["scores"]["ours"], s["scores"]["release"]
    cut_note = f" (the first {RELEASE_MAX_SAMPLES}: {s['truncated_samples']} left out)" if s["truncated_samples"] else ""
    print(f"{s['samples']} samples{cut_note}, {config.protocol} protocol, {info['decoding']} decoding, "
          f"{config.max_steps} steps, {s['scoring']} scoring: cIoU {100 * s['ciou']:.2f}  gIoU {100 * s['giou']:.2f}")
    print(f"scoring ours: {ours['samples']} samples scored, cIoU {100 * ours['ciou']:.2f}  gIoU {100 * ours['giou']:.2f} | "
          f"release: {release['samples']} scored, {release['dropped']} dropped (no click), "
          f"cIoU {100 * release['ciou']:.2f}  gIoU {100 * release['giou']:.2f}")
    print("IoU after step t: " + "  ".join(f"{v:.3f}" for v in s["per_step"]["iou_after_step"])
          + " | PRM-selected: " + "  ".join(f"{v:.3f}" for v in s["per_step"]["iou_selected"]))
    print(f"PRM (IoU x 100, {prm['pairs']} masks): MAE {prm['mae']:.2f}  Pearson {prm['pearson']:.3f}  "
          f"Spearman {prm['spearman']:.3f}")
    if "text_start" in s:
        t = s["text_start"]
        print(f"SAM 3 text start (before the policy's clicks): cIoU {100 * t['ciou']:.2f}  gIoU {100 * t['giou']:.2f}, "
              f"{100 * t['grounded']:.1f}% of the samples grounded")
    print(f"malformed answers {100 * s['malformed_rate']:.1f}%, {s['mean_calls']:.2f} policy calls and "
          f"{s['mean_clicks']:.2f} clicks per sample, {s['seconds_per_sample']:.2f} s per sample -> {args.out}")
    return 0


def _text_start(settings: Settings, policy, release: bool):
    """The episodes' start from SAM 3's text prompt when SEGAGENT_TEXT_MODEL is set (as automatic predictions
    start): (image, expression) -> the mask, None where SAM 3 finds nothing; else None."""
    if not settings.text_model:
        return None
    from ..agent.grounding import Ungroundable, text_start
    from ..agent.loading import ModelLoadError
    from ..agent.segmenters import EmbeddingCache
    from ..wiring import text_model_from_settings
    from .models import check_checkpoint, load_failure, quiet_load_errors

    check_checkpoint(settings.text_model, f"SEGAGENT_TEXT_MODEL={settings.text_model!r}")
    with quiet_load_errors():
        try:
            grounder = text_model_from_settings(settings, EmbeddingCache(settings.cache_bytes))  # sentences share images
        except (ModelLoadError, ValueError, OSError) as exc:
            raise load_failure(f"SEGAGENT_TEXT_MODEL={settings.text_model!r}", str(exc)) from None

    def start(image, expression):
        try:
            return text_start(grounder, policy, image, expression, settings.text_threshold, release).mask
        except Ungroundable:
            return None
    return start


def _image_exists(images: Path, name: str) -> bool:
    from trainer.refseg import find_image

    try:
        find_image(images, name)
    except FileNotFoundError:
        return False
    return True
