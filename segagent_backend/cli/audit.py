"""``segagent audit``: the policy's IoU estimate of every submitted brush annotation of a Label Studio project.

Each annotation's mask is shown to the policy painted on its image, as the loop shows a mask at a step,
and the policy's ``Current IOU`` answer is its estimate of that mask (no clicks are run). Masks are
judged in chunks, one batched policy call each, in this process. Each estimate is posted as a
prediction on the task: model version ``audit-<serving version>``, ``score`` = the estimate, and the
audited mask as its result (the annotation's brush regions, each with the score), so reviewers see it
in the labeling screen and in the Data Manager (``--select`` makes it the project's model version: the
*Prediction score* column then shows, sorts and filters by the audit's estimates).

Idempotent: an annotation whose current mask already holds a prediction of this audit version is
skipped (its earlier estimate is reported) unless ``--force``; a re-audited annotation (forced, or its
mask edited since) replaces its earlier audit prediction. Prints the worst first and writes a CSV.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..settings import Settings
from .arguments import add_project_arguments, check_output_file
from .errors import CommandFailed, UsageError, service_down

AUDITED, KEPT, NO_ESTIMATE, REJECTED, FAILED = "audited", "kept", "no estimate", "rejected", "failed"
CSV_FIELDS = ("task_id", "annotation_id", "estimate", "status", "model_version", "reason")
#: masks (``agent.mask_estimates.MaskToJudge``) -> the policy's estimates, in order
Judge = Callable[[list], list[Optional[float]]]


#: what ``segagent audit --help`` says the command does
DESCRIPTION = """\
Ask the SegAgent policy (SEGAGENT_POLICY, or the promoted version) for its IoU estimate of every submitted
brush annotation of a Label Studio project; post each as a prediction (model version audit-<version>, score
= the estimate); print the worst first and write a CSV. Annotations already audited by this version are
skipped unless --force. Needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY."""


def register(sub) -> None:
    """``segagent audit``."""
    p = sub.add_parser("audit", help="the policy's IoU estimate of every brush annotation of a Label Studio project",
                       description=DESCRIPTION)
    add_project_arguments(p, force_help="audit again annotations this version audited already")
    p.add_argument("--csv", metavar="FILE", help="write every annotation's row here (default: audit-project-ID.csv)")
    p.add_argument("--batch", type=_positive, metavar="N",
                   help="masks per policy call (default: SEGAGENT_BATCH_CHUNK)")
    p.add_argument("--top", type=_positive, default=20, metavar="N", help="print the N worst (default 20; the CSV has all)")
    p.add_argument("--select", action="store_true",
                   help="make the audit the project's model version, so the Data Manager's Prediction score column "
                        "sorts and filters by it (pre-labels then come from the audit: select the model again under "
                        "Settings > Annotation to undo)")
    p.add_argument("--json", action="store_true", help="print the summary and the rows as JSON")
    p.set_defaults(run=cmd_audit)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


@dataclass
class Row:
    """One annotation's outcome. ``estimate``: 0..1, None when there is none."""

    task_id: int
    annotation_id: Optional[int]
    estimate: Optional[float]
    status: str
    model_version: str = ""
    reason: str = ""


@dataclass
class _Pending:
    """An annotation to judge: its correction (image URL, expression, RLE), key and earlier audits."""

    correction: Any
    regions: list[dict]  # the annotation's brush regions, posted back as the audit's result
    key: str
    replaces: list[int]


def audit_key(annotation_id: Optional[int], rles: list) -> str:
    """Names one annotation's mask as it is now: the audit regions' id prefix (``audit-a<id>-<digest>``)."""
    digest = hashlib.sha1(json.dumps(rles, separators=(",", ":")).encode()).hexdigest()[:10]
    return f"audit-a{annotation_id}-{digest}"


def cmd_audit(args: argparse.Namespace) -> int:
    from ..labelstudio.client import label_studio

    check_output_file(args.csv, "--csv")
    settings = Settings.from_env()
    ls = label_studio(settings)  # RequestError without LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY
    judge = PolicyJudge(settings, args.batch or settings.batch_chunk)
    version = audit_version_of(judge.model_version)
    try:
        rows = audit_project(settings, ls, judge, judge.model_version, args.project, args.tasks, args.force,
                             judge.batch)
    except Exception as exc:
        raise label_studio_failure(exc, settings, args.project) from None
    if args.select:
        select_version(ls, args.project, version)
    path = Path(args.csv or f"audit-project-{args.project}.csv").expanduser()
    try:
        write_csv(path, rows)
    except OSError as exc:
        raise CommandFailed(f"--csv {path}: {exc.strerror or exc}") from None
    summary = summarise(rows, args.project, version, str(path), args.select)
    failed = [r for r in rows if r.status == FAILED]
    if args.json:
        print(json.dumps({**summary, "rows": [asdict(r) for r in worst_first(rows)]}))
    else:
        print(report(rows, summary, args.top))
    if failed:  # an image that did not load, or Label Studio not taking an estimate: nothing posted for them
        first = "; ".join(f"task {r.task_id} annotation {r.annotation_id}: {r.reason}" for r in failed[:3])
        raise CommandFailed(f"{len(failed)} of {len(rows)} annotation(s) failed, nothing was posted for them; first: "
                            f"{first}; run the command again to audit them")
    return 0


def label_studio_failure(exc: Exception, settings: Settings, project: int) -> Exception:
    """A failed Label Studio call as a one-line CLI error (any other exception as it is)."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    from ..labelstudio.client import failure_reason

    if isinstance(exc, ApiError) and exc.status_code == 404:
        return UsageError(f"no project {project} in Label Studio at {settings.label_studio_url}")
    if isinstance(exc, httpx.TransportError):  # not answering: start it or fix LABEL_STUDIO_URL (exit status 2)
        return service_down(exc) or exc
    if isinstance(exc, (ApiError, httpx.HTTPError)):
        return CommandFailed(f"Label Studio at {settings.label_studio_url}: {failure_reason(exc)}")
    return exc


class PolicyJudge:
    """The policy of the model host a service process builds (``assembly.model_host``: the promoted
    version, else SEGAGENT_POLICY), loaded on the first masks to judge (a run that has nothing new to judge
    loads nothing). Called with masks -> their estimates, ONE batched policy call per ``batch`` masks."""

    def __init__(self, settings: Settings, batch: int):
        from ..assembly import model_host
        from .models import check_checkpoint

        self.host = model_host(settings)
        self.settings, self.batch = settings, batch
        if self.host.policy_checkpoint is None:
            raise UsageError("an audit asks a SegAgent policy: set SEGAGENT_POLICY (a model folder or hub id)")
        if self.host.policy_checkpoint == settings.policy:
            check_checkpoint(settings.policy, f"SEGAGENT_POLICY={settings.policy!r}")

    @property
    def model_version(self) -> str:
        return self.host.model_version

    def __call__(self, requests: list) -> list[Optional[float]]:
        from ..errors import ModelUnavailable
        from .models import load_failure, quiet_load_errors

        with quiet_load_errors():
            try:
                self.host.load()
            except ModelUnavailable as exc:
                checkpoint = self.host.policy_checkpoint
                what = (f"SEGAGENT_POLICY={checkpoint!r}" if checkpoint == self.settings.policy
                        else f"model version {checkpoint!r}")
                raise load_failure(what, str(exc)) from None
        return self.host.estimate_masks(requests, self.batch)


def audit_version_of(model_version: str) -> str:
    from ..annotation_audit import audit_version

    return audit_version(model_version)


def audit_project(settings: Settings, ls, judge: Judge, model_version: str, project: int,
                  task_ids: Optional[list[int]] = None, force: bool = False, batch: int = 4) -> list[Row]:
    """Audit the project's annotations (those of ``task_ids`` when given): one Row per annotation.

    ``judge``: masks -> estimates (:class:`PolicyJudge`); it gets at most ``batch`` masks at a time, so
    no more than ``batch`` images are held at once."""
    from ..labelstudio.annotations import BRUSH, AnnotationError, correction_from
    from ..labelstudio.client import annotated_tasks, as_dict
    from ..labelstudio.config import ConfigError, parse_label_config
    from ..wiring import media_loader

    version = audit_version_of(model_version)
    media = media_loader(settings)
    try:
        config = parse_label_config(ls.projects.get(id=project).label_config, settings.expression_field,
                                    settings.max_label_config_kb * 1024)
    except ConfigError as exc:
        raise UsageError(f"project {project}'s label config: {exc.problem}") from None
    rows: list[Row] = []
    pending: list[_Pending] = []
    for task in annotated_tasks(ls, project, task_ids):
        earlier = [as_dict(p) for p in task.get("predictions") or []]
        earlier = [p for p in earlier if p.get("model_version") == version]
        for annotation in task["annotations"]:
            annotation = as_dict(annotation)
            if annotation.get("was_cancelled"):
                continue
            try:
                correction = correction_from(annotation, task, config, project, decode=False)  # decoded when judged
            except AnnotationError as exc:
                rows.append(Row(task["id"], annotation.get("id"), None, REJECTED, version, str(exc)))
                continue
            key = audit_key(correction.annotation_id, correction.rle)
            mine = [p for p in earlier if _audits(p, f"audit-a{correction.annotation_id}-")]
            same = [p for p in mine if _audits(p, key + "-")]
            if same and not force:
                rows.append(Row(task["id"], correction.annotation_id, _score(same[-1]), KEPT, version))
                continue
            regions = [r for r in annotation["result"] if isinstance(r, dict) and r.get("type") == BRUSH]
            pending.append(_Pending(correction, regions, key, [p["id"] for p in mine]))
            if len(pending) >= batch:
                rows += _judge(media, ls, judge, version, pending)
                pending = []
    if pending:
        rows += _judge(media, ls, judge, version, pending)
    return rows


def _audits(prediction: dict, prefix: str) -> bool:
    """Whether an audit prediction's regions carry ids starting with ``prefix``."""
    result = prediction.get("result") or []
    return any(isinstance(r, dict) and str(r.get("id", "")).startswith(prefix) for r in result)


def _score(prediction: dict) -> Optional[float]:
    score = prediction.get("score")
    return float(score) if isinstance(score, (int, float)) else None


def _judge(media, ls, judge: Judge, version: str, pending: list[_Pending]) -> list[Row]:
    """Load the chunk's images, judge every mask (ONE policy call), post each estimate."""
    from ..agent.mask_estimates import MaskToJudge
    from ..errors import RequestError
    from ..labelstudio.annotations import AnnotationError, check_mask
    from ..labelstudio.client import delete_prediction, failure_reason, post_prediction

    rows, judged, requests = [], [], []
    for item in pending:
        c = item.correction
        try:
            mask = check_mask(c)  # the RLE checked against its size before decoding
            image = media.load(c.image_url, c.task_id)
        except AnnotationError as exc:
            rows.append(Row(c.task_id, c.annotation_id, None, REJECTED, version, str(exc)))
            continue
        except RequestError as exc:  # the image: unreachable, refused, not an image, too large
            rows.append(Row(c.task_id, c.annotation_id, None, FAILED, version, exc.message))
            continue
        judged.append(item)
        requests.append(MaskToJudge(image, mask, c.expression))
    estimates = judge(requests) if requests else []
    del requests
    for item, estimate in zip(judged, estimates):
        c = item.correction
        if estimate is None:
            rows.append(Row(c.task_id, c.annotation_id, None, NO_ESTIMATE, version,
                            "the policy's answer has no readable estimate"))
            continue
        try:
            post_prediction(ls, c.task_id, audit_result(item.regions, item.key, estimate), estimate, version)
            for old in item.replaces:  # after the new one is stored: an interruption never loses an audit
                delete_prediction(ls, old)
        except Exception as exc:  # Label Studio down or refusing (the SDK already retried)
            rows.append(Row(c.task_id, c.annotation_id, estimate, FAILED, version,
                            f"Label Studio: {failure_reason(exc)}"))
            continue
        rows.append(Row(c.task_id, c.annotation_id, estimate, AUDITED, version))
    return rows


def audit_result(regions: list[dict], key: str, estimate: float) -> list[dict]:
    """The prediction's result: the annotation's brush regions as they are, each with the estimate as its
    score and an id naming the annotation and its mask (what the next run recognises)."""
    keep = ("from_name", "to_name", "type", "original_width", "original_height", "image_rotation", "value")
    return [{**{k: region[k] for k in keep if k in region}, "id": f"{key}-{n}", "score": estimate}
            for n, region in enumerate(regions)]


def select_version(ls, project: int, version: str) -> None:
    """Make ``version`` the project's model version (the Data Manager's Prediction score follows it)."""
    from ..labelstudio.client import failure_reason

    try:
        ls.projects.update(id=project, model_version=version)
    except Exception as exc:
        raise CommandFailed(f"Label Studio did not select {version} for project {project} "
                            f"({failure_reason(exc)})") from None


def worst_first(rows: list[Row]) -> list[Row]:
    """Rows with an estimate, lowest first; then those without one."""
    return sorted(rows, key=lambda r: (r.estimate is None, r.estimate if r.estimate is not None else 0.0,
                                       r.task_id, r.annotation_id or 0))


def summarise(rows: list[Row], project: int, version: str, csv_path: str, selected: bool) -> dict:
    counts = {status: sum(r.status == status for r in rows) for status in (AUDITED, KEPT, NO_ESTIMATE, REJECTED, FAILED)}
    failures = [{"task": r.task_id, "annotation": r.annotation_id, "reason": r.reason}
                for r in rows if r.status == FAILED][:5]
    return {"project": project, "model_version": version, "annotations": len(rows), **counts,
            "failures": failures, "csv": csv_path, "selected": selected}


def report(rows: list[Row], summary: dict, top: int) -> str:
    """The worst ``top`` annotations, then one summary line."""
    scored = [r for r in worst_first(rows) if r.estimate is not None]
    lines = [f"{'task':>8}  {'annotation':>10}  {'estimate':>8}  status"]
    lines += [f"{r.task_id:>8}  {r.annotation_id if r.annotation_id is not None else '-':>10}  "
              f"{r.estimate:>8.3f}  {r.status}" for r in scored[:top]]
    if len(scored) > top:
        lines.append(f"... {len(scored) - top} more in the CSV")
    others = [r for r in rows if r.estimate is None]
    for r in others[:top]:
        lines.append(f"{r.task_id:>8}  {r.annotation_id if r.annotation_id is not None else '-':>10}  "
                     f"{'-':>8}  {r.status}: {r.reason}")
    lines.append(f"project {summary['project']}, {summary['model_version']}: {summary['annotations']} annotation(s): "
                 f"{summary[AUDITED]} audited, {summary[KEPT]} kept from an earlier audit, {summary[NO_ESTIMATE]} "
                 f"without an estimate, {summary[REJECTED]} rejected, {summary[FAILED]} failed; wrote {summary['csv']}")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[Row]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in worst_first(rows):
            row = asdict(r)
            row["estimate"] = "" if r.estimate is None else f"{r.estimate:.4f}"
            row["annotation_id"] = "" if r.annotation_id is None else r.annotation_id
            writer.writerow(row)
