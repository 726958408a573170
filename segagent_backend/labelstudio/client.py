"""The Label Studio SDK client this service talks to (LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from ..errors import RequestError
from ..settings import Settings


SDK_TIMEOUT_S = 60.0  # the SDK's own default, which it drops when given an httpx client


def label_studio(settings: Settings):
    """The SDK client for LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY (both required): a legacy token or a
    personal access token (exchanged for access tokens, renewed early, one retry after a 401)."""
    import httpx
    from label_studio_sdk import LabelStudio

    from ..media.access_tokens import RenewingAuth, credentials

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise RequestError("this talks to Label Studio: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
    # the slash: the SDK joins its token-refresh path with urljoin, which drops a base path's last part
    base_url = settings.label_studio_url.rstrip("/") + "/"
    key = settings.label_studio_api_key
    auth = RenewingAuth(credentials(base_url, key))
    client = httpx.Client(timeout=SDK_TIMEOUT_S, follow_redirects=True, auth=auth)
    return LabelStudio(base_url=base_url, api_key=key, timeout=SDK_TIMEOUT_S, httpx_client=client)


# ----- what an annotation audit reads and writes (``segagent audit``) ---------------------------------
def as_dict(item: Any) -> dict:
    """An SDK object (pydantic) or a plain dict -> a plain dict."""
    return item.model_dump() if hasattr(item, "model_dump") else dict(item)


def annotated_tasks(ls, project: int, task_ids: Optional[Iterable[int]] = None) -> Iterator[dict]:
    """The tasks of ``project`` (only ``task_ids`` when given, in that order) as dicts with their
    ``data``, ``annotations`` and ``predictions``; tasks without an annotation are left out.
    RequestError when a given task is not in the project."""
    if task_ids is None:
        tasks = (as_dict(t) for t in ls.tasks.list(project=project, fields="all"))
    else:
        tasks = (_project_task(ls, project, task_id) for task_id in dict.fromkeys(task_ids))
    for task in tasks:
        if task.get("annotations"):
            yield task


def _project_task(ls, project: int, task_id: int) -> dict:
    try:
        task = as_dict(ls.tasks.get(id=str(task_id)))
    except Exception as exc:
        if getattr(exc, "status_code", None) == 404:
            raise RequestError(f"task {task_id} is not in project {project}") from None
        raise
    if task.get("project") not in (None, project):
        raise RequestError(f"task {task_id} is not in project {project}")
    return task


def post_prediction(ls, task_id: int, result: list, score: Optional[float], model_version: str) -> int:
    """One prediction on ``task_id``; its id. ``score`` None: the prediction has none (Label Studio allows it)."""
    extra = {} if score is None else {"score": score}
    return ls.predictions.create(task=task_id, result=result, model_version=model_version, **extra).id


def delete_prediction(ls, prediction_id: int) -> None:
    ls.predictions.delete(id=prediction_id)


def failure_reason(exc: Exception) -> str:
    """A short reason for a failed Label Studio call, without headers, bodies or URLs."""
    status = getattr(exc, "status_code", None)
    return f"HTTP {status}" if status is not None else type(exc).__name__
