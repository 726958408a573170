"""JSON files written atomically (temp file + ``os.replace``): a reader sees the old or the new content, never half."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Optional


def write_json_atomic(path: os.PathLike, data: Any, indent: Optional[int] = None) -> None:
    """Write ``data`` as JSON to ``path`` through a hidden temp file in the same folder, then rename it."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        temp.write_text(json.dumps(data, indent=indent), encoding="utf-8")
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_json_object(path: os.PathLike) -> dict:
    """The JSON object in ``path``; ``{}`` when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
