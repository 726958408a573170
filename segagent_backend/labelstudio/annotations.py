"""Annotations as training data: what an annotator submitted for a task, checked and decoded.

The same records come from three places: webhook bodies (``ANNOTATION_CREATED`` / ``_UPDATED`` carry
one annotation and its task; ``ANNOTATIONS_CREATED`` a list of each), a project pulled through the
SDK, and a Label Studio JSON export (tasks with their ``annotations``). Brush regions are Label
Studio's own RLE, decoded by ``brush``.

Bad annotations are not errors of the request: each becomes a ``Rejected`` with a reason, so a bulk
event with one bad annotation still records the good ones.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

import numpy as np

from ..errors import RequestError
from .brush import BRUSH, MAX_MASK_PIXELS, AnnotationError, union
from .config import ConfigError, LabelConfig, parse_label_config
from .tasks import expression, valid_id

# Pixels of masks a webhook decodes (~13 ms per megapixel): a bulk event beyond it is answered within
# Label Studio's 1 s and the rest is decoded, and rejected if need be, when a round loads it.
WEBHOOK_DECODE_PIXELS = 20_000_000
# A correction keeps its task's image URL and expression: every annotation of a bulk event on one task
# would otherwise repeat a long one on disk. Presigned URLs are ~2 KB; an expression is a sentence.
MAX_URL_CHARS = 8192
MAX_EXPRESSION_CHARS = 2048
MAX_VERSION_CHARS = 256  # a model version named by the task's prediction


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
    data: dict = field(default_factory=dict)  # of the task's data, only the keys training reads (image, expression)

    def mask(self) -> np.ndarray:
        """The object: (height, width) bool, the union of the brush regions."""
        return union(self.rle, self.width, self.height)

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
    task_id = valid_id(task.get("id"))
    if task_id is None:
        raise AnnotationError("the task needs a positive integer 'id'")
    annotation_id = annotation.get("id")
    if annotation_id is not None and valid_id(annotation_id) is None:
        raise AnnotationError("the annotation 'id' must be a positive integer")
    results = annotation.get("result")
    if results is not None and not isinstance(results, list):
        raise AnnotationError("the annotation 'result' must be a list of regions")
    regions = [r for r in results or [] if isinstance(r, dict) and r.get("type") == BRUSH]
    if not regions:
        raise AnnotationError("no brush region in the annotation")
    width, height = _region_size(regions)
    rles, values = [], []
    for region in regions:
        value = region.get("value")
        if not isinstance(value, dict):
            raise AnnotationError("a brush region's 'value' must be an object")
        rle = value.get("rle")
        if not isinstance(rle, list) or not rle:
            raise AnnotationError("a brush region has no 'rle' list")
        rles.append(rle)
        values.append(value)
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    url = data.get(config.image_field)
    if not isinstance(url, str) or not url.strip():
        raise AnnotationError(f"task data has no image under {config.image_field!r}")
    if len(url) > MAX_URL_CHARS:
        raise AnnotationError(f"the task's image URL has {len(url)} characters, more than {MAX_URL_CHARS}")
    labels = values[0].get(BRUSH)
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(v, str) for v in labels)):
        raise AnnotationError(f"a brush region's value.{BRUSH} must be a list of label strings")
    label = labels[0] if labels else None
    text = expression(task, config, label)
    if not text:
        raise AnnotationError("no referring expression for the task")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise AnnotationError(f"the referring expression has {len(text)} characters, more than {MAX_EXPRESSION_CHARS}")
    # the rest of the task's data stays in Label Studio: a bulk event's annotations of one task must not
    # each store a copy of it (200 annotations x 1 MB of data were 200 MB on disk)
    kept = {config.image_field: url}
    written = data.get(config.expression_field) if config.expression_field else None
    if isinstance(written, str) and written.strip() == text:  # the expression came from the task's data
        kept[config.expression_field] = text
    correction = Correction(project, task_id, annotation_id, url, text, rles, width, height, label,
                            _corrected_prediction(annotation, task), kept)
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
    if not all(valid_id(v) is not None for v in (width, height)):
        raise AnnotationError("brush regions need positive integer original_width and original_height")
    if width * height > MAX_MASK_PIXELS:
        raise AnnotationError(f"the brush regions claim a {width}x{height} image, above {MAX_MASK_PIXELS} pixels")
    return width, height


def _corrected_prediction(annotation: dict, task: dict) -> Optional[dict]:
    """The prediction the annotator started from (``parent_prediction``), with its model version."""
    parent = valid_id(annotation.get("parent_prediction"))
    if parent is None:
        return None
    predictions = task.get("predictions") if isinstance(task.get("predictions"), list) else []
    version = next((p.get("model_version") for p in predictions
                    if isinstance(p, dict) and p.get("id") == parent), None)
    # the task's, so shared by all its annotations: a long one is not copied into each
    usable = isinstance(version, str) and len(version) <= MAX_VERSION_CHARS
    return {"id": parent, "model_version": version if usable else None}


def corrections_from_webhook(body: dict, expression_field: Optional[str] = None
                             ) -> tuple[list[Correction], list[Rejected]]:
    """The annotations of an ANNOTATION_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_CREATED body."""
    project = body.get("project") if isinstance(body.get("project"), dict) else {}
    annotations, tasks = body.get("annotation"), body.get("task")
    if isinstance(annotations, dict):
        annotations, tasks = [annotations], [tasks]
    if not isinstance(annotations, list) or not isinstance(tasks, list):
        return [], [Rejected(None, None, "the body has no 'annotation' and 'task'")]
    by_id = {valid_id(t.get("id")): t for t in tasks if isinstance(t, dict)}
    pairs = [(a, by_id.get(valid_id(a.get("task"))) if isinstance(a, dict) and valid_id(a.get("task"))
              else (tasks[i] if i < len(tasks) else None)) for i, a in enumerate(annotations)]
    return _check_all(pairs, project.get("label_config"), _project_id(project), expression_field,
                      WEBHOOK_DECODE_PIXELS)


def corrections_from_tasks(tasks: Iterable[dict], label_config: str, project: Optional[int] = None,
                           expression_field: Optional[str] = None) -> tuple[list[Correction], list[Rejected]]:
    """Every annotation of exported (or SDK-listed) tasks; the latest annotation per task wins."""
    pairs = []
    for task in tasks:
        found = task.get("annotations") if isinstance(task, dict) else None
        annotations = [a for a in found if isinstance(a, dict) and not a.get("was_cancelled")] \
            if isinstance(found, list) else []
        if annotations:
            latest = max(annotations, key=lambda a: (str(a.get("updated_at") or ""), valid_id(a.get("id")) or 0))
            pairs.append((latest, task))
    return _check_all(pairs, label_config, project, expression_field)


def _check_all(pairs: list, label_config: Any, project: Optional[int], expression_field: Optional[str],
               decode_pixels: Optional[int] = None) -> tuple[list[Correction], list[Rejected]]:
    """Check every (annotation, task) pair; masks are decoded while ``decode_pixels`` lasts (None: all)."""
    # only ids that are ids travel on (to replies, logs and file names): anything else is None
    ids = [(valid_id(t.get("id")) if isinstance(t, dict) else None,
            valid_id(a.get("id")) if isinstance(a, dict) else None) for a, t in pairs]
    try:
        config = parse_label_config(label_config, expression_field)
    except ConfigError as exc:
        return [], [Rejected(t, a, f"label config: {exc.problem}") for t, a in ids]
    except RequestError as exc:  # too large
        return [], [Rejected(t, a, f"label config: {exc.message}") for t, a in ids]
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
            # the SDK decoder's time grows with the pixels and the RLE's bits
            budget -= correction.width * correction.height + 8 * sum(len(r) for r in correction.rle)
    return good, bad


def _project_id(project: dict) -> Optional[int]:
    return valid_id(project.get("id"))
