"""Label Studio local-files URLs (``/data/local-files/?d=<path>``) read straight from the disk.

Mirrors the SDK's ``get_local_path``: ``d`` is relative to Label Studio's document root
(``LOCAL_FILES_DOCUMENT_ROOT``, here ``settings.local_files_root``); a file that exists under it is
read directly, anything else is fetched from Label Studio like an upload. Unlike the SDK (whose root
defaults to ``/``), nothing is read without a configured root, and symlinks are resolved before the
check, so neither ``..`` nor a link can leave the root.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from .policy import PolicyRefusal

LOCAL_FILES_PATH = "/data/local-files"


class OutsideRoot(PolicyRefusal):
    """A local-files path that is absolute, or resolves (symlinks followed) outside the root."""


def local_files_param(path_and_query: str) -> Optional[str]:
    """The ``d`` parameter of a ``/data/local-files/?d=...`` path (None when it is not one).

    Decoded as Label Studio's server decodes it (a query string: ``%xx`` and ``+``)."""
    parts = urlsplit(path_and_query)
    if parts.path.rstrip("/") != LOCAL_FILES_PATH:
        return None
    values = parse_qs(parts.query, keep_blank_values=True).get("d")
    return values[0] if values else None


def resolve_local_file(relative: str, root: Path) -> Optional[Path]:
    """The file ``relative`` names under ``root``, all symlinks resolved; None when there is no such
    file (fetch it from Label Studio instead). Raises OutsideRoot when the path leaves the root."""
    if not relative or "\x00" in relative:
        raise OutsideRoot(f"local file {relative!r} is not a relative path")
    base = Path(root).resolve()
    candidate = Path(relative)
    if candidate.is_absolute():
        raise OutsideRoot(f"local file {relative!r} is absolute")
    target = (base / candidate).resolve()
    if target != base and not target.is_relative_to(base):
        raise OutsideRoot(f"local file {relative!r} resolves to {target}, outside {base}")
    return target if target.is_file() else None
