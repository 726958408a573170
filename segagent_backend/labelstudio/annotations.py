"""Annotations as training data: what an annotator submitted for a task, checked and decoded.

The same records come from three places: webhook bodies (``ANNOTATION_CREATED`` / ``_UPDATED`` carry
one annotation and its task; ``ANNOTATIONS_CREATED`` a list of each), a project pulled through the
SDK, and a Label Studio JSON export (tasks with their ``annotations``). Brush regions are Label
Studio's own RLE, decoded with the SDK's ``decode_rle`` (not COCO RLE).

Bad annotations are not errors of the request: each becomes a ``Rejected`` with a reason, so a bulk
event with one bad annotation still records the good ones.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from .config import ConfigError, LabelConfig, parse_label_config
from .tasks import expression

BRUSH = "brushlabels"
# Pixels of masks a webhook decodes (~13 ms per megapixel): a bulk event beyond it is answered within
# Label Studio's 1 s and the rest is decoded, and rejected if need be, when a round loads it.
WEBHOOK_DECODE_PIXELS = 20_000_000


class AnnotationError(ValueError):
    """This annotation cannot teach anything (no brush region, empty mask, wrong size, ...)."""


@dataclass
class Correction:
    """One usable annotation: the task's image, its expression and the final brush mask.

    ``rle`` holds the brush regions as Label Studio sent them (one RLE list per region; their union is
    the object), ``width`` x ``height`` the size they were drawn at. ``prediction``: the prediction it
    corrected (``{"id", "model_version"}``) when Label Studio says so, else None.
    """

    project: Optional[int]
    task_id: int
    annotation_id: Optional[int]
    image_url: str
    expression: str
    rle: list[list[int]]
    width: int
    height: int
    label: Optional[str] = None
    prediction: Optional[dict] = None
    data: dict = field(default_factory=dict)  # the task's data (media URLs may need it)

    def mask(self) -> np.ndarray:
        """The object: (height, width) bool, the union of the brush regions."""
        out = np.zeros((self.height, self.width), dtype=bool)
        for rle in self.rle:
            out |= decode_brush(rle, self.width, self.height)
        return out

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Correction":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Rejected:
    """An annotation that was not used, and why."""

    task_id: Any
    annotation_id: Any
    reason: str


def decode_brush(rle: list[int], width: int, height: int) -> np.ndarray:
    """Label Studio brush RLE -> (height, width) bool; AnnotationError when it does not fit the size."""
    try:
        flat = decode_rle(rle)
    except Exception as exc:  # the SDK's bit reader fails in several ways on garbage
        raise AnnotationError(f"brush RLE cannot be decoded ({type(exc).__name__})") from None
    if flat.size != width * height * 4:
        raise AnnotationError(f"brush mask has {flat.size // 4} pixels, the image is {width}x{height}")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def correction_from(annotation: Any, task: Any, config: LabelConfig, project: Optional[int] = None,
                    decode: bool = True) -> Correction:
    """Check one annotation of ``task`` and keep what training needs; AnnotationError says why not.

    ``decode``: also decode the mask (RLE that fits its size, not empty). A training round decodes
    every mask again, so one left undecoded here is still rejected with its reason, only later.
    """
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise AnnotationError("annotation and task must be objects")
    if annotation.get("was_cancelled"):
        raise AnnotationError("the annotation was skipped (cancelled)")
    task_id = task.get("id")
    if not isinstance(task_id, int):
        raise AnnotationError("the task has no integer id")
    regions = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == BRUSH]
    if not regions:
        raise AnnotationError("no brush region in the annotation")
    width, height = _region_size(regions)
    rles = []
    for region in regions:
        rle = (region.get("value") or {}).get("rle")
        if not isinstance(rle, list) or not rle:
            raise AnnotationError("a brush region has no 'rle' list")
        rles.append(rle)
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    url = data.get(config.image_field)
    if not isinstance(url, str) or not url.strip():
        raise AnnotationError(f"task data has no image under {config.image_field!r}")
    labels = (regions[0].get("value") or {}).get(BRUSH) or [None]
    text = expression(task, config, labels[0])
    if not text:
        raise AnnotationError("no referring expression for the task")
    correction = Correction(project, task_id, annotation.get("id"), url, text, rles, width, height, labels[0],
                            _corrected_prediction(annotation, task), data)
    if decode:
        check_mask(correction)
    return correction


def check_mask(correction: Correction) -> np.ndarray:
    """The correction's mask; AnnotationError when its RLE does not fit or it is empty."""
    mask = correction.mask()
    if not mask.any():
        raise AnnotationError("the brush mask is empty")
    return mask


def _region_size(regions: list[dict]) -> tuple[int, int]:
    sizes = {(r.get("original_width"), r.get("original_height")) for r in regions}
    if len(sizes) != 1:
        raise AnnotationError(f"brush regions disagree on the image size: {sorted(sizes, key=str)}")
    width, height = sizes.pop()
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise AnnotationError("brush regions need positive integer original_width and original_height")
    return width, height


def _corrected_prediction(annotation: dict, task: dict) -> Optional[dict]:
    """The prediction the annotator started from (``parent_prediction``), with its model version."""
    parent = annotation.get("parent_prediction")
    if parent is None:
        return None
    version = next((p.get("model_version") for p in task.get("predictions") or []
                    if isinstance(p, dict) and p.get("id") == parent), None)
    return {"id": parent, "model_version": version}


def corrections_from_webhook(body: dict, expression_field: Optional[str] = None
                             ) -> tuple[list[Correction], list[Rejected]]:
    """The annotations of an ANNOTATION_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_CREATED body."""
    project = body.get("project") if isinstance(body.get("project"), dict) else {}
    annotations, tasks = body.get("annotation"), body.get("task")
    if isinstance(annotations, dict):
        annotations, tasks = [annotations], [tasks]
    if not isinstance(annotations, list) or not isinstance(tasks, list):
        return [], [Rejected(None, None, "the body has no 'annotation' and 'task'")]
    by_id = {t.get("id"): t for t in tasks if isinstance(t, dict)}
    pairs = [(a, by_id.get(a.get("task")) if isinstance(a, dict) and isinstance(a.get("task"), int)
              else (tasks[i] if i < len(tasks) else None)) for i, a in enumerate(annotations)]
    return _check_all(pairs, project.get("label_config"), _project_id(project), expression_field,
                      WEBHOOK_DECODE_PIXELS)


def corrections_from_tasks(tasks: Iterable[dict], label_config: str, project: Optional[int] = None,
                           expression_field: Optional[str] = None) -> tuple[list[Correction], list[Rejected]]:
    """Every annotation of exported (or SDK-listed) tasks; the latest annotation per task wins."""
    pairs = []
    for task in tasks:
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if annotations:
            latest = max(annotations, key=lambda a: (str(a.get("updated_at") or ""), a.get("id") or 0))
            pairs.append((latest, task))
    return _check_all(pairs, label_config, project, expression_field)


def _check_all(pairs: list, label_config: Any, project: Optional[int], expression_field: Optional[str],
               decode_pixels: Optional[int] = None) -> tuple[list[Correction], list[Rejected]]:
    """Check every (annotation, task) pair; masks are decoded while ``decode_pixels`` lasts (None: all)."""
    ids = [(t.get("id") if isinstance(t, dict) else None, a.get("id") if isinstance(a, dict) else None)
           for a, t in pairs]
    try:
        config = parse_label_config(label_config, expression_field)
    except ConfigError as exc:
        return [], [Rejected(t, a, f"label config: {exc}") for t, a in ids]
    good, bad = [], []
    budget = decode_pixels
    for (annotation, task), (tid, aid) in zip(pairs, ids):
        try:
            correction = correction_from(annotation, task, config, project, decode=budget is None or budget > 0)
        except AnnotationError as exc:
            bad.append(Rejected(tid, aid, str(exc)))
            continue
        good.append(correction)
        if budget is not None:
            budget -= correction.width * correction.height
    return good, bad


def _project_id(project: dict) -> Optional[int]:
    value = project.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
