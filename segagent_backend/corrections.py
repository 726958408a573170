"""Recorded corrections: annotations the next training round learns from, kept on disk.

Layout (under ``MODEL_DIR/corrections``; shared storage when processes run on several machines)::

    <project>/a<annotation id>.json   one Correction (an update overwrites it; a deletion removes it)
    <project>/state.json              {"new": corrections recorded since the last training started}
    rejected.jsonl                    every annotation that was not usable, with its reason

Files are written atomically (temp file + rename) and the counter under an exclusive ``flock``, so
several web processes can record at once and a crash never leaves half a record. Redis keeps
nothing on disk on these machines; corrections must survive restarts, so they live here.

The folder has a byte quota (``SEGAGENT_CORRECTIONS_MAX_MB``): an event that would pass it records
nothing (``StoreFull``, HTTP 507), so webhooks cannot fill the volume that versions, training, the media
cache (and maybe Redis) share. Several processes check it at once without a lock: it may be passed by
what arrives at the same instant, never by more.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, Optional

from .errors import RequestError
from .jsonfiles import read_json_object, write_json_atomic
from .labelstudio.annotations import Correction, Rejected
from .labelstudio.tasks import valid_id

log = logging.getLogger(__name__)

NO_PROJECT = "no-project"
MAX_REASON_CHARS = 300  # of a rejection's reason kept in rejected.jsonl (some quote what was sent)
_RECORD_OVERHEAD = 512  # bytes of a correction file besides its RLE, URL and expression (keys, ids, sizes)


class StoreFull(RequestError):
    """Recording would pass the quota of ``corrections/`` (HTTP 507 Insufficient Storage)."""

    def __init__(self, used: int, incoming: int, quota: int):
        super().__init__(f"corrections not recorded: MODEL_DIR/corrections holds {used / 2**20:.1f} MB and this "
                         f"event needs about {incoming / 2**20:.2f} MB more, past SEGAGENT_CORRECTIONS_MAX_MB="
                         f"{quota // 2**20}; train on or delete older corrections, or raise the quota", 507)


class CorrectionStore:
    def __init__(self, root: os.PathLike, max_bytes: Optional[int] = None):
        self.root = Path(root)
        self.max_bytes = max_bytes  # None: no quota

    @classmethod
    def from_settings(cls, settings) -> "CorrectionStore":
        return cls(Path(settings.model_dir) / "corrections", settings.corrections_max_mb * 2**20)

    # ----- writing -----------------------------------------------------------------------------
    def check_room(self, corrections: list[Correction], rejected: list[Rejected]) -> None:
        """Raise StoreFull (and log it) when recording these would pass the quota; nothing is written."""
        if self.max_bytes is None:
            return
        incoming = sum(_size_estimate(c) for c in corrections) + len(rejected) * (MAX_REASON_CHARS + 128)
        used = self.bytes_used()
        if used + incoming > self.max_bytes:
            log.error("corrections store full: %d bytes used + ~%d incoming > SEGAGENT_CORRECTIONS_MAX_MB=%d; "
                      "%d correction(s) and %d rejection(s) not recorded", used, incoming, self.max_bytes // 2**20,
                      len(corrections), len(rejected))
            raise StoreFull(used, incoming, self.max_bytes)

    def bytes_used(self) -> int:
        """Bytes of every file under the store (a walk: ~10 ms per 10,000 corrections)."""
        total = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    continue  # removed meanwhile
        return total

    def record(self, corrections: Iterable[Correction]) -> dict[Optional[int], int]:
        """Store ``corrections``; returns, per project, how many were recorded since training last started."""
        counts: dict[Optional[int], int] = {}
        for c in corrections:
            folder = self._folder(c.project)
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / _file_name(c), {**c.to_json(), "recorded_at": time.time()})
            counts[c.project] = counts.get(c.project, 0) + 1
        return {project: self._bump(project, n) for project, n in counts.items()}

    def reject(self, rejected: Iterable[Rejected], action: str) -> None:
        """Append the unusable annotations and their reasons to ``rejected.jsonl``."""
        lines = [json.dumps({**asdict(r), "reason": str(r.reason)[:MAX_REASON_CHARS], "action": action,
                             "at": time.time()}) + "\n" for r in rejected]
        if lines:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(self.root / "rejected.jsonl", "a", encoding="utf-8") as f:
                f.writelines(lines)

    def delete_annotations(self, annotation_ids: Iterable[int]) -> int:
        """Remove these annotations from the next round; returns how many were recorded."""
        return self._remove(f"a{i}.json" for i in annotation_ids if valid_id(i) is not None)

    def delete_tasks(self, task_ids: Iterable[int]) -> int:
        """Remove every correction of these tasks (the tasks were deleted in Label Studio)."""
        wanted = set(task_ids)
        return self._remove(p.name for p, c in self._records() if c.task_id in wanted)

    # ----- reading -----------------------------------------------------------------------------
    def corrections(self, project: Optional[int] = None) -> list[Correction]:
        """Every recorded correction (of ``project`` when given), oldest first."""
        found = [(p.stat().st_mtime, c) for p, c in self._records(project)]
        return [c for _, c in sorted(found, key=lambda pair: pair[0])]

    def rejected(self) -> list[dict]:
        path = self.root / "rejected.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def training_started(self, project: Optional[int]) -> None:
        """A round takes everything recorded so far: the counter starts again from zero."""
        with self._state(project) as state:
            state["new"] = 0

    def claim_round(self, project: Optional[int], every: int) -> bool:
        """True (and the counter back to zero) when ``every`` new corrections are waiting; checked and
        reset under one lock, so two processes recording at once never both start a round."""
        with self._state(project) as state:
            due = every > 0 and int(state.get("new", 0)) >= every
            if due:
                state["new"] = 0
            return due

    # ----- internals ---------------------------------------------------------------------------
    def _folder(self, project: Optional[int]) -> Path:
        if project is None:
            return self.root / NO_PROJECT
        if valid_id(project) is None:  # only a positive integer ever names a folder
            raise ValueError("a project id must be a positive integer")
        return self.root / str(project)

    def _records(self, project: Optional[int] = None) -> Iterator[tuple[Path, Correction]]:
        folders = [self._folder(project)] if project is not None else [
            p for p in self.root.iterdir() if p.is_dir()] if self.root.is_dir() else []
        for folder in folders:
            for path in sorted(folder.glob("a*.json")):
                try:
                    yield path, Correction.from_json(json.loads(path.read_text(encoding="utf-8")))
                except (OSError, ValueError, TypeError):
                    continue  # removed meanwhile, or not ours

    def _remove(self, names: Iterable[str]) -> int:
        wanted = set(names)
        removed = 0
        if self.root.is_dir():
            for folder in (p for p in self.root.iterdir() if p.is_dir()):
                for name in wanted:
                    try:
                        (folder / name).unlink()
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def _bump(self, project: Optional[int], n: int) -> int:
        with self._state(project) as state:
            state["new"] = int(state.get("new", 0)) + n
            return state["new"]

    @contextmanager
    def _state(self, project: Optional[int]) -> Iterator[dict]:
        folder = self._folder(project)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".state.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # read-modify-write across threads and processes
            state = read_json_object(folder / "state.json")
            yield state
            write_json_atomic(folder / "state.json", state)


def _size_estimate(c: Correction) -> int:
    """About the bytes of ``c``'s file: an RLE value is written as up to 5 characters ("255, ")."""
    return (5 * sum(len(r) for r in c.rle) + len(c.image_url) + len(c.expression) + len(json.dumps(c.data))
            + len(c.label or "") + _RECORD_OVERHEAD)


def _file_name(c: Correction) -> str:
    """``a<annotation id>.json`` (unique in Label Studio); exports without one fall back to the task.
    Only positive integers ever reach a file name (never ``/``, NUL or a long string)."""
    if c.annotation_id is not None:
        if valid_id(c.annotation_id) is None:
            raise ValueError("an annotation id must be a positive integer")
        return f"a{c.annotation_id}.json"
    if valid_id(c.task_id) is None:
        raise ValueError("a task id must be a positive integer")
    return f"at{c.task_id}.json"


