"""Model versions: trained policies under ``MODEL_DIR/versions/`` and which one is current.

Layout::

    MODEL_DIR/versions/
        v1/meta.json      what the version is (base, data, counts, metrics, parent, created_at)
        v1/model/         the policy checkpoint (a transformers folder, as SEGAGENT_POLICY would name)
        current.json      {"version", "counter", "history", "promoted_at"}: the current pointer

``current.json`` is the truth and is always replaced atomically (``jsonfiles.write_json_atomic``), so a
reader never sees half a pointer. With ``REDIS_URL`` a promotion is also announced in Redis (key
``<prefix>:model:current``) so processes on other machines see it with one GET; ``MODEL_DIR`` must
then be storage those machines share (the version folders are read from it).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .jsonfiles import write_json_atomic

VERSIONS = "versions"
CURRENT = "current.json"
META = "meta.json"
MODEL = "model"


class RegistryError(ValueError):
    """A registry operation cannot be done (unknown version, nothing to roll back to, ...)."""


def check_version_name(version) -> str:
    """``version`` if it is a version name (letters, digits, '.', '-', '_'; not starting with '.'), else
    RegistryError. Checked where a name is written AND where one is read (current.json, the Redis key):
    a name is a folder under MODEL_DIR/versions, and ``../../tmp/evil`` in Redis must not name another."""
    if not isinstance(version, str) or not version or len(version) > 200 or version.startswith(".") \
            or not version.replace("-", "").replace("_", "").replace(".", "").isalnum() or not version.isascii():
        raise RegistryError(f"version {str(version)[:80]!r}: use letters, digits, '.', '-' and '_'")
    return version


def _is_version_name(name: str) -> bool:
    try:
        check_version_name(name)
    except RegistryError:
        return False
    return True


@dataclass(frozen=True)
class VersionMeta:
    """What ``meta.json`` says about one version."""

    version: str
    base: Optional[str] = None  # the checkpoint it was trained from
    data: Any = None  # what it was trained on (project ids, dataset names, ...)
    counts: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    parent: Optional[str] = None  # the version that was current when it was registered
    created_at: float = 0.0

    @classmethod
    def from_json(cls, data: dict) -> "VersionMeta":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class Current:
    """The current pointer: ``version`` None = no version promoted (SEGAGENT_POLICY serves)."""

    version: Optional[str] = None
    counter: int = 0  # grows on every promotion/rollback, so a change is seen even back to an old name
    history: tuple[str, ...] = ()  # promoted versions, oldest first; the last one is current
    promoted_at: float = 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "history": list(self.history)}

    @classmethod
    def from_json(cls, data: dict) -> "Current":
        return cls(data.get("version"), int(data.get("counter", 0)), tuple(data.get("history", ())),
                   float(data.get("promoted_at", 0.0)))


class Registry:
    """The versions of one ``MODEL_DIR``; ``redis_url`` set = promotions are announced there too."""

    def __init__(self, model_dir: os.PathLike, redis_url: Optional[str] = None, prefix: str = "segagent",
                 redis_timeout: float = 2.0):
        self.root = Path(model_dir) / VERSIONS
        self.redis_url = redis_url
        self.key = f"{prefix}:model:current"
        self.redis_timeout = redis_timeout
        self._redis = None

    @classmethod
    def from_settings(cls, settings) -> "Registry":
        return cls(settings.model_dir, settings.redis_url, settings.queue_prefix, settings.redis_timeout)

    # ----- versions ----------------------------------------------------------------------------
    def model_folder(self, version: str) -> Path:
        """The policy checkpoint of ``version`` (what SEGAGENT_POLICY would name)."""
        return self.root / check_version_name(version) / MODEL

    def register(self, policy_folder: os.PathLike, meta: Optional[dict] = None, move: bool = False) -> VersionMeta:
        """Copy (or move) ``policy_folder`` (a trained policy's folder) in as a new version; not promoted.

        ``meta`` may name the ``version`` (default ``v<N+1>``); ``parent`` defaults to the current one.
        The folder appears under its final name in one rename, so a half-copied version is never listed.
        """
        policy_folder = Path(policy_folder)
        if not policy_folder.is_dir():
            raise RegistryError(f"{policy_folder}: not a model folder")
        meta = dict(meta or {})
        version = check_version_name(str(meta.get("version") or self._next_name()))
        if (self.root / version).exists():
            raise RegistryError(f"version {version!r} exists")
        meta.update(version=version, parent=meta["parent"] if "parent" in meta else self._current_or_none(),
                    created_at=meta.get("created_at") or time.time())
        info = VersionMeta.from_json(meta)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            if move:
                shutil.move(str(policy_folder), staging / MODEL)
            else:
                shutil.copytree(policy_folder, staging / MODEL)
            (staging / META).write_text(json.dumps(asdict(info), indent=2))
            os.replace(staging, self.root / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return info

    def list_versions(self) -> list[VersionMeta]:
        """Every registered version, oldest first."""
        if not self.root.is_dir():
            return []
        found = [self.meta(p.name) for p in self.root.iterdir() if p.is_dir() and _is_version_name(p.name)]
        return sorted(found, key=lambda m: (m.created_at, m.version))

    def meta(self, version: str) -> VersionMeta:
        path = self.root / check_version_name(version) / META
        try:
            return VersionMeta.from_json(json.loads(path.read_text()))
        except (OSError, ValueError):  # a folder without readable metadata is still a version
            return VersionMeta(version)

    # ----- the current pointer -----------------------------------------------------------------
    def current(self) -> Current:
        """What ``current.json`` says (no version promoted yet: ``Current()``).

        A pointer that cannot be read (a torn or corrupted file: it is written atomically, so only a
        damaged disk or a hand edit does that) raises RegistryError naming it; processes that already
        serve a version keep serving it, and a ``promote`` writes a fresh pointer.
        """
        path = self.root / CURRENT
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            current = Current.from_json(data)
            if current.version is not None:
                check_version_name(current.version)
            return current
        except FileNotFoundError:
            return Current()
        except (OSError, ValueError, TypeError) as exc:
            raise RegistryError(f"{path} is unreadable ({type(exc).__name__}: {exc}); what serves keeps serving: "
                                f"`segagent versions promote <version>` writes a fresh pointer") from None

    def promote(self, version: str) -> Current:
        """Make ``version`` current and announce it (also the way out of an unreadable pointer)."""
        if not self.model_folder(version).is_dir():
            raise RegistryError(f"no version {version!r} (no folder {self.model_folder(version)})")
        try:
            now = self.current()
        except RegistryError:  # start a fresh history; a counter nobody has seen, so every process notices
            now = Current(counter=int(time.time()))
        return self._set(Current(version, now.counter + 1, now.history + (version,), time.time()))

    def rollback(self) -> Current:
        """Back to the version that was current before the current one (none left: SEGAGENT_POLICY)."""
        now = self.current()
        if not now.history:
            raise RegistryError("nothing to roll back: no version is current")
        history = now.history[:-1]
        return self._set(Current(history[-1] if history else None, now.counter + 1, history, time.time()))

    def _current_or_none(self) -> Optional[str]:
        try:
            return self.current().version
        except RegistryError:  # an unreadable pointer: the new version just has no parent
            return None

    def announced(self) -> tuple[Optional[str], int]:
        """(version, counter) as announced: one Redis GET with REDIS_URL (the file when the key is
        missing, e.g. after a Redis flush), else one small file read. Cheap enough per request."""
        if self.redis_url:
            raw = self._conn().get(self.key)
            if raw is not None:
                data = json.loads(raw)
                version = data.get("version")
                if version is not None:  # anyone who can write to Redis writes this key: a name, not a path
                    check_version_name(version)
                return version, int(data.get("counter", 0))
        now = self.current()
        return now.version, now.counter

    def _set(self, current: Current) -> Current:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / CURRENT, current.to_json(), indent=2)  # readers see the old or the new pointer
        if self.redis_url:  # processes poll this key (between requests and jobs)
            self._conn().set(self.key, json.dumps({"version": current.version, "counter": current.counter}))
        return current

    def _conn(self):
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.redis_url, socket_connect_timeout=self.redis_timeout,
                                               socket_timeout=self.redis_timeout)
        return self._redis

    def _next_name(self) -> str:
        taken = {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()
        n = 1
        while f"v{n}" in taken:
            n += 1
        return f"v{n}"
