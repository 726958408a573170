"""What the torch-based tools share when loading: the device choice and one error type."""
from __future__ import annotations

from pathlib import Path

import torch


class ModelLoadError(RuntimeError):
    """A model file/folder is missing, unreadable or not the expected architecture."""


def is_local_path(name: str) -> bool:
    """The one rule for "a folder on this machine, not a hub id": it exists, starts with ``.``, ``/`` or ``~``,
    ends with ``/``, or has more than one ``/`` (a hub id is ``ORG/NAME``: ``runs/x/model`` is a folder)."""
    return (name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1
            or Path(name).expanduser().exists())


def checkpoint_source(source, what: str = "model folder") -> str:
    """A ``save_pretrained`` folder on this machine (checked: it exists, is a folder and holds config.json;
    returned with ``~`` expanded) or a hub id (returned as is: transformers fetches it or finds it in the HF
    cache). ModelLoadError naming ``what`` and the path when the folder cannot be used."""
    text = str(source)
    if not is_local_path(text):
        return text
    folder = Path(text).expanduser()
    if not folder.is_dir():
        reason = "it is a file, not a folder" if folder.exists() else "no such folder, it does not exist"
        raise ModelLoadError(f"{what} {text!r} cannot be used: {reason}")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{what} {text!r} has no config.json (not a save_pretrained folder)")
    return str(folder)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu`` / ``cuda`` / ``cuda:N`` are checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"invalid device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    return dev
