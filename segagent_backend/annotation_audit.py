"""POST /audit: the serving policy's estimate of the quality of one annotation's brush mask."""
from __future__ import annotations

from .agent.mask_estimates import MaskToJudge
from .errors import NO_AUDIT_POLICY, RequestError
from .labelstudio.annotations import AnnotationError, check_mask, correction_from
from .labelstudio.config import ConfigError, parse_label_config
from .labelstudio.sources import ProjectSources
from .labelstudio.tasks import task_id
from .media import MediaLoader
from .model_host import ModelHost

#: Label Studio tells an audit's predictions from the policy's own masks by this prefix of their model version
AUDIT_PREFIX = "audit-"


def audit_version(model_version: str) -> str:
    """``audit-<model_version>``: the model version of the audit predictions the policy ``model_version`` made."""
    return AUDIT_PREFIX + model_version


def audit_annotation(host: ModelHost, media: MediaLoader, sources: ProjectSources, body: dict, config_chars: int) -> dict:
    """POST /audit: the serving policy's IoU estimate of one annotation's brush mask on its task's image."""
    settings = host.settings
    try:
        config = parse_label_config(body["label_config"], settings.expression_field, config_chars)
    except ConfigError as exc:
        raise RequestError(f"label_config: {exc.problem}", 400, "label_config") from None
    task, annotation = body["task"], body["annotation"]
    try:  # the RLE checked against its claimed size before decoding; an id-less task is checked as task 1
        correction = correction_from(annotation, task if task_id(task) else {**task, "id": 1}, config, decode=False)
        mask = check_mask(correction)
    except AnnotationError as exc:
        where = "task.data" if str(exc).startswith("task data") or "expression" in str(exc) else "annotation.result"
        raise RequestError(f"{where}: {exc}", 400, where) from None
    # the image before the policy: a caller's mistake (an image we may not fetch) is answered as such
    image = media.load(correction.image_url, task_id(task), sources.source_for(body.get("project")))
    if host.policy_checkpoint is None:
        raise RequestError(NO_AUDIT_POLICY, 501)
    (score,) = host.estimate_masks([MaskToJudge(image, mask, correction.expression)], 1)
    reply = {"score": score, "model_version": audit_version(host.model_version)}
    return reply if score is not None else {**reply, "reason": "the policy's answer has no readable estimate"}
