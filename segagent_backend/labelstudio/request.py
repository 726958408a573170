"""A /predict request, parsed ONCE where it arrives (``parse_predict``: the label config and the clicks under
the service's size and click limits) into the ``PredictRequest`` every later step takes: the inline
dispatcher, the queue (as JSON, in chunks) and the worker's ``Predictions``. Nothing after the edge parses
the label config or the context again."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

from ..settings import Settings
from .config import LabelConfig, parse_label_config
from .context import Prompt, parse_context


@dataclass(frozen=True)
class PredictRequest:
    """Tasks to predict with their parsed label config and, for clicks, the annotator's prompt.

    References only, never credentials: a queued request lives in Redis (failed jobs for a week), so a
    worker reads where the project's images are, and the token for them, from its OWN settings.
    ``deadline``: epoch seconds after which nobody waits for the answer (set when it is queued)."""

    tasks: list
    config: LabelConfig
    prompt: Optional[Prompt] = None
    project: Any = None
    deadline: Optional[float] = None

    @property
    def interactive(self) -> bool:
        return self.prompt is not None

    def with_tasks(self, tasks: list, deadline: Optional[float] = None) -> "PredictRequest":
        """The same request for ``tasks`` (a chunk of its own), with ``deadline`` when given."""
        return replace(self, tasks=tasks, deadline=self.deadline if deadline is None else deadline)

    def to_json(self) -> dict:
        return {"tasks": self.tasks, "config": self.config.to_json(),
                "prompt": self.prompt.to_json() if self.prompt is not None else None,
                "project": self.project, "deadline": self.deadline}

    @classmethod
    def from_json(cls, data: dict) -> "PredictRequest":
        """What ``to_json`` wrote, rebuilt as it was (the parse happened in the web process)."""
        prompt = data.get("prompt")
        return cls(data["tasks"], LabelConfig.from_json(data["config"]),
                   Prompt.from_json(prompt) if prompt is not None else None, data.get("project"), data.get("deadline"))


def parse_predict(body: dict, settings: Settings) -> PredictRequest:
    """A /predict body (its shape already checked against the schema) -> PredictRequest; RequestError (400,
    413) naming the field for a label config or context this service does not take."""
    config = parse_label_config(body.get("label_config"), settings.expression_field,
                                settings.max_label_config_kb * 1024)
    context = (body.get("params") or {}).get("context")
    prompt = parse_context(context, config, settings.max_clicks, settings.max_image_pixels)
    return PredictRequest(body["tasks"], config, prompt, body.get("project"))
