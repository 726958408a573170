"""One training round of the service: annotations in, a new model version out, promoted if not worse.

``run_training`` is what a train job runs (an RQ worker on the train queue, or a thread of the web
process in embedded mode):

1. the round's data: the project's recorded corrections, or (``data_from="labelstudio"``, the Start
   Training button) every annotated task of the project pulled through the SDK;
2. images fetched like /predict fetches them; masks checked against them (wrong size: rejected);
3. a held-out split (``SEGAGENT_HOLDOUT``) chosen by task id, so it is stable across rounds;
4. trajectories with the tool the workers serve, SFT (+ StaR+ rounds) from ``SEGAGENT_POLICY``;
5. the candidate and the serving policy run episodes on the held-out tasks (mean IoU and cIoU);
6. the candidate becomes a version with its metadata, promoted only when not worse
   (``SEGAGENT_FORCE_PROMOTE`` promotes regardless); workers and web processes reload it.

Every round leaves ``MODEL_DIR/training/<run>.json``: its status (running, promoted, kept, failed),
the reason, counts, metrics and the rejected annotations. A failure at any point registers and
promotes nothing; the serving version is untouched.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from .accelerator import free_accelerator_memory
from .corrections import CorrectionStore
from .jsonfiles import write_json_atomic
from .labelstudio.annotations import Correction, Rejected, check_mask, corrections_from_tasks
from .labelstudio.client import label_studio
from .media import MediaLoader
from .registry import Registry
from .settings import Settings
from .wiring import finetune_config, loop_config, media_loader, policy_spec, segmenter_from_settings

if TYPE_CHECKING:
    from trainer.finetune import FinetuneConfig

    from .agent.loop import LoopConfig
    from .agent.policies import PolicySpec

log = logging.getLogger(__name__)


# Runs or queues one round: (project id or None, its data: "corrections" or "labelstudio") -> what was started
# (queue/training.py).
StartTraining = Callable[[Optional[int], str], dict]


class TrainingError(RuntimeError):
    """The round cannot produce a candidate (no base policy, too little usable data, ...)."""


@dataclass(frozen=True)
class RoundConfig:
    """What a round trains and judges with, read from the settings once."""

    policy: "PolicySpec"  # the base to fine-tune (SEGAGENT_POLICY), and how every policy of the round runs
    loop: "LoopConfig"  # the serving loop: the StaR+ rollouts and the held-out comparison run under it
    finetune: "FinetuneConfig"
    star_rounds: int
    stop_samples: bool  # SEGAGENT_TRAIN_STOP_SAMPLES
    force_promote: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> "RoundConfig":
        return cls(policy_spec(settings), loop_config(settings), finetune_config(settings), settings.star_rounds,
                   settings.train_stop_samples, settings.force_promote)


@dataclass
class TrainReport:
    run: str
    project: Optional[int]
    source: str  # the round's data: "corrections" | "labelstudio" (``data_from``; "source" in the report's JSON)
    status: str = "running"  # running | promoted | kept | failed | killed
    reason: str = ""
    version: Optional[str] = None
    counts: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    rejected: list = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: Optional[float] = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


def training_dir(settings: Settings) -> Path:
    return Path(settings.model_dir) / "training"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run_training(settings: Settings, project: Optional[int], data_from: str = "corrections",
                 run: Optional[str] = None) -> TrainReport:
    """One round (see the module docstring); never raises for a bad round: the report says why."""
    report = TrainReport(run or new_run_id(), project, data_from)
    _save(settings, report)
    workdir = training_dir(settings) / report.run
    try:
        _round(settings, report, workdir)
    except Exception as exc:
        report.status, report.reason = "failed", f"{type(exc).__name__}: {exc}"
        if _out_of_space(exc):
            # nothing to resume from a round that cannot write: free what it wrote, so the report fits
            shutil.rmtree(workdir, ignore_errors=True)
            report.reason = (f"out of disk space (or over a file size limit) writing under MODEL_DIR/training/"
                             f"{report.run}: {report.reason}")
        log.error("training run %s failed: %s\n%s", report.run, report.reason, traceback.format_exc())
    report.finished_at = time.time()
    _save(settings, report)
    if report.status in ("promoted", "kept"):
        shutil.rmtree(workdir, ignore_errors=True)  # the model now lives in its version folder
    return report


SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
SPACE_TEXTS = ("No space left", "File too large", "Disk quota exceeded", "os error 28", "os error 27")


def _out_of_space(exc: BaseException) -> bool:
    """A full disk, a quota or a file size limit, also when a library wrapped the OSError (safetensors)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS or any(t in str(exc) for t in SPACE_TEXTS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _round(settings: Settings, report: TrainReport, workdir: Path) -> None:
    from trainer.pipeline import train_policy
    from trainer.samples import samples_from_trace
    from trainer.trajectories import generate_traces

    if not settings.policy:
        raise TrainingError("no base policy to fine-tune: set SEGAGENT_POLICY")
    corrections, rejected = collect_corrections(settings, report.project, report.source)
    samples, more = load_samples(media_loader(settings), corrections)
    report.rejected = [asdict(r) for r in rejected + more]
    train, held_out = split(samples, settings.holdout)
    report.counts = {"annotations": len(corrections), "rejected": len(report.rejected), "usable": len(samples),
                     "train": len(train), "held_out": len(held_out)}
    config = RoundConfig.from_settings(settings)
    segmenter = segmenter_from_settings(settings)  # its own: the serving one may be busy with /predict
    traces = generate_traces(segmenter, train)
    sft = [s for trace, sample in zip(traces, train)
           for s in samples_from_trace(trace, sample.image, config.policy.convention, [sample.expression],
                                       config.stop_samples, config.loop.release)]
    report.counts.update(traces=len(traces), sft_samples=len(sft))
    if not sft:
        raise TrainingError("the trajectories gave no training samples")
    outcome = train_policy(sft, config.policy, workdir, config.finetune, loop=config.loop,
                           star_rounds=config.star_rounds, samples=train, segmenter=segmenter, progress=False)
    free_accelerator_memory()  # the trainer's model is gone; its cached blocks need not wait for the next one
    _judge_and_register(config, Registry.from_settings(settings), report, outcome, held_out, segmenter)


def collect_corrections(settings: Settings, project: Optional[int], data_from: str
                        ) -> tuple[list[Correction], list[Rejected]]:
    """The round's annotations: the recorded corrections, or the project pulled from Label Studio."""
    if data_from == "corrections":
        return CorrectionStore.from_settings(settings).corrections(project), []
    if data_from != "labelstudio":
        raise TrainingError(f"unknown training data {data_from!r}")
    if project is None:
        raise TrainingError("training on a Label Studio project needs its id")
    ls = label_studio(settings)
    config = ls.projects.get(id=project).label_config
    tasks = [t.model_dump() if hasattr(t, "model_dump") else dict(t)
             for t in ls.tasks.list(project=project, fields="all")]
    return corrections_from_tasks(tasks, config, project, settings.expression_field)


def load_samples(media: MediaLoader, corrections: list[Correction]):
    """Corrections -> trainer Samples (image + mask, fetched by ``media``); each one that cannot be used is
    a Rejected."""
    from trainer.datasets import Sample

    samples, rejected = [], []
    for c in corrections:
        try:
            image = media.load(c.image_url, c.task_id)
            mask = check_mask(c)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"the brush mask is {c.width}x{c.height}, the image {image.shape[1]}x{image.shape[0]}")
        except Exception as exc:  # a deleted task, an unreachable image, a mask of the wrong size
            rejected.append(Rejected(c.task_id, c.annotation_id, getattr(exc, "message", None) or str(exc)))
            continue
        samples.append(Sample(f"task-{c.task_id}", image, mask, np.zeros_like(mask), c.expression))
    return samples, rejected


def split(samples: list, fraction: float) -> tuple[list, list]:
    """(train, held out): a stable ``fraction`` of the samples by a hash of their name, at least one
    each; raises TrainingError with fewer than 2 samples (nothing to learn from AND judge on)."""
    if len(samples) < 2:
        raise TrainingError(f"need at least 2 usable annotations to train and evaluate, have {len(samples)}")
    ranked = sorted(samples, key=lambda s: hashlib.sha256(s.name.encode()).hexdigest())
    n_held = min(max(1, round(fraction * len(samples))), len(samples) - 1)
    return ranked[n_held:], ranked[:n_held]


def _judge_and_register(config: RoundConfig, registry: Registry, report: TrainReport, outcome, held_out: list,
                        segmenter) -> None:
    from trainer.evaluation import evaluate_policy

    from .agent.policies import load_policy

    serving = registry.current().version
    current_checkpoint = str(registry.model_folder(serving)) if serving else config.policy.checkpoint

    def score(checkpoint: str):  # one policy in memory at a time
        policy = load_policy(config.policy.at(checkpoint))
        result = evaluate_policy(policy, segmenter, held_out, config.loop)
        del policy
        free_accelerator_memory()
        return result

    candidate, current = score(str(outcome.model_dir)), score(current_checkpoint)
    report.metrics = {"candidate": _metrics(candidate), "current": {**_metrics(current), "version": serving},
                      "training": outcome.to_json()["rounds"]}
    meta = {"base": config.policy.checkpoint,
            "data": {"project": report.project, "source": report.source, "run": report.run},
            "counts": report.counts, "metrics": report.metrics}
    info = registry.register(outcome.model_dir, meta, move=True)
    report.version = info.version
    better = candidate.not_worse_than(current)
    if better or config.force_promote:
        registry.promote(info.version)
        report.status = "promoted"
        report.reason = "not worse than the serving policy" if better else "forced (SEGAGENT_FORCE_PROMOTE)"
    else:
        report.status = "kept"
        report.reason = (f"worse than the serving policy on {len(held_out)} held-out task(s): mIoU "
                         f"{candidate.miou:.4f} vs {current.miou:.4f}, cIoU {candidate.ciou:.4f} vs {current.ciou:.4f}")


def _metrics(score) -> dict:
    return {"miou": score.miou, "ciou": score.ciou, "samples": score.samples}


def _save(settings: Settings, report: TrainReport) -> None:
    folder = training_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"{report.run}.json", asdict(report), indent=2)


def list_reports(settings: Settings, last: Optional[int] = None) -> list[TrainReport]:
    """Every round's report (the ``last`` N), oldest first; a "running" round whose process is gone
    is "killed". Run ids start with their start time, so file names sort in time order."""
    folder = training_dir(settings)
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    reports = []
    for path in paths[-last:] if last else paths:
        try:
            report = TrainReport(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if report.status == "running" and report.host == socket.gethostname() and not _alive(report.pid):
            report.status, report.reason = "killed", "its process ended before the round finished"
        reports.append(report)
    return reports


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
