"""Model names in settings and options: a local folder or a hub id, decided by ONE rule everywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .agent.loading import is_local_path
from .settings import Settings, SettingsError

__all__ = ["check_model_paths", "is_local_path"]


def check_model_paths(settings: Settings) -> None:
    """Fail at start, naming the setting, when a configured weights path does not exist."""
    files = {"sam": ("SEGAGENT_SAM_CHECKPOINT", settings.sam_checkpoint),
             "simpleclick": ("SEGAGENT_SIMPLECLICK_CHECKPOINT", settings.simpleclick_checkpoint)}
    if settings.segmenter in files:
        var, path = files[settings.segmenter]
        if not path or not Path(path).is_file():
            raise SettingsError(f"{var}={path!r}: no such file")
    folders: dict[str, Optional[str]] = {
        "SEGAGENT_SAM_MODEL": settings.sam_model if settings.segmenter == "hf-sam" else None,
        "SEGAGENT_POLICY": settings.policy, "SEGAGENT_TEXT_MODEL": settings.text_model}
    for var, model in folders.items():  # a hub id is checked when it loads; a local path now
        if model is not None and is_local_path(model) and not Path(model).expanduser().is_dir():
            raise SettingsError(f"{var}={model!r}: no such model folder")
