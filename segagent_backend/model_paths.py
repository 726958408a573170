"""The model names of the settings that will load, checked at start by the agent's one rule
(``agent.loading.weights_problem``), each named by its variable."""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

from .agent.loading import weights_problem
from .agent.segmenters import SEGMENTERS
from .settings import Settings, SettingsError, variable_of

__all__ = ["ModelName", "check_model_paths", "model_names", "tool_weights"]


class ModelName(NamedTuple):
    variable: str  # e.g. SEGAGENT_POLICY
    name: str
    file: bool  # a .pth file, not a hub id or model folder

    def __str__(self) -> str:
        return f"{self.variable}={self.name!r}"


def tool_weights(settings: Settings) -> Optional[ModelName]:
    """Where the interactive tool's weights come from (None: it needs none)."""
    tool = SEGMENTERS[settings.segmenter]
    if tool.weights is None:
        return None
    return ModelName(variable_of(tool.weights), getattr(settings, tool.weights), tool.file)


def model_names(settings: Settings) -> Iterator[ModelName]:
    """Every model the settings will load: the tool's weights, the policy, SAM 3's text model."""
    tool = tool_weights(settings)
    if tool is not None:
        yield tool
    for attr in ("policy", "text_model"):
        if getattr(settings, attr):
            yield ModelName(variable_of(attr), getattr(settings, attr), False)


def check_model_paths(settings: Settings) -> None:
    """Fail at start, naming the setting, when configured weights on this machine cannot be used (a hub id
    is checked when it loads)."""
    for model in model_names(settings):
        problem = weights_problem(model.name, model.file)
        if problem:
            raise SettingsError(f"{model}: {problem}")
