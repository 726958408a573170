"""What the tools and policies share when loading: the ONE check of a model name on this machine, the
device choice and one error type. torch is imported only to choose a device, so the service and the CLI
check names before anything heavy loads."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch


class ModelLoadError(RuntimeError):
    """A model file/folder is missing, unreadable or not the expected architecture."""


def is_local_path(name: str) -> bool:
    """The one rule for "a folder on this machine, not a hub id": it exists, starts with ``.``, ``/`` or ``~``,
    ends with ``/``, or has more than one ``/`` (a hub id is ``ORG/NAME``: ``runs/x/model`` is a folder)."""
    return (name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1
            or Path(name).expanduser().exists())


def weights_problem(name: Optional[str], file: bool = False) -> Optional[str]:
    """Why the weights ``name`` are not there, None when they are: a ``.pth`` file when ``file``, else a folder
    on this machine (a hub id is left to the loader or the hub). Every caller asks here: the service at
    start, the CLI before loading, the loaders themselves (which then read the folder: :func:`resolve_checkpoint`)."""
    if not name:
        return "not set"
    path = Path(str(name)).expanduser()
    if file:
        return None if path.is_file() else "it is a folder, not a file" if path.is_dir() else "no such file"
    if not is_local_path(str(name)) or path.is_dir():
        return None
    return "it is a file, not a folder" if path.exists() else "no such folder, it does not exist"


def checkpoint_file(path, what: str) -> Path:
    """A ``.pth`` checkpoint on this machine (checked by :func:`weights_problem`); ModelLoadError naming
    ``what``, the path and the problem otherwise."""
    problem = weights_problem(str(path), file=True)
    if problem:
        raise ModelLoadError(f"{what} {path} cannot be used: {problem}")
    return Path(path)


def resolve_checkpoint(checkpoint, what: str = "model folder") -> str:
    """A ``save_pretrained`` folder on this machine (checked by :func:`weights_problem`, and it holds
    config.json; returned with ``~`` expanded) or a hub id (returned as is: transformers fetches it or finds
    it in the HF cache). ModelLoadError naming ``what`` and the path when the folder cannot be used."""
    text = str(checkpoint)
    problem = weights_problem(text)
    if problem:
        raise ModelLoadError(f"{what} {text!r} cannot be used: {problem}")
    if not is_local_path(text):
        return text
    folder = Path(text).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{what} {text!r} has no config.json (not a save_pretrained folder)")
    return str(folder)


def resolve_device(device: str = "auto") -> "torch.device":
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu`` / ``cuda`` / ``cuda:N`` are checked."""
    import torch

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
