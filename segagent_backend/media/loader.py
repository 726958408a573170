"""Task images: resolved under the media policy, downloaded into the cache, decoded, size-checked.

``MediaLoader.load(url, task_id, source)`` -> (H, W, 3) uint8 RGB array, EXIF orientation applied.
Handles what Label Studio puts in task data:

- ``/data/upload/..`` (and ``upload/..``): fetched from Label Studio with its token (falling back to
  ``/storage-data/uploaded/?filepath=upload/..`` as the SDK does);
- ``/data/local-files/?d=..``: read from ``LOCAL_FILES_DOCUMENT_ROOT`` when the file is there, else
  fetched from Label Studio;
- ``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``: presigned through Label Studio
  (``/tasks/<task id>/presign/?fileuri=..``, then the redirect to the storage);
- ``http(s)://``: Label Studio's own host, or a host of SEGAGENT_MEDIA_ALLOW_HOSTS.

Downloads are cached under ``MODEL_DIR/cache/media`` (a name derived from the fetched URL), at most
``cache_bytes`` of them: past it the least recently used go (a hit marks a file used).
What a caller sees never repeats what a server other than Label Studio said, nor an exception's text or
a server path; the reason goes to the log, the URL there without its query and on one line (``logtext``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional
from urllib.parse import quote, unquote, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .. import logtext
from ..errors import MediaError
from .download import FetchFailed, Request, download
from .local import OutsideRoot, local_files_param, resolve_local_file
from .policy import ALLOW_HOSTS, ALLOW_PRIVATE, LabelStudioHost, MediaPolicy, Origin, PolicyRefusal

log = logging.getLogger(__name__)

CLOUD_PREFIXES = ("s3://", "gs://", "azure-blob://", "azure-spi://")
_UPLOAD = "/data/upload/"
_STORAGE_PROXY = "/storage-data/uploaded/"
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
_TASK_ID = re.compile(r"^[1-9][0-9]{0,18}$")


@dataclass
class MediaSource:
    """Where Label Studio lives for downloads of uploaded, local-storage and cloud files: its base URL
    (http(s)) and access token; None when unknown."""

    hostname: Optional[str] = None
    access_token: Optional[str] = field(default=None, repr=False)  # never in logs or reprs


@dataclass(frozen=True)
class _Target:
    """What to fetch for a task URL: ``url`` (absolute), whether it is Label Studio's (its errors may
    be shown), the SDK's ``fallback`` URL for uploads, and the cache file's suffix (".png")."""

    url: str
    label_studio: bool
    fallback: Optional[str] = None
    suffix: str = ""


def check_task_id(task_id: Any) -> int:
    """A Label Studio task id as a positive int; MediaError 422 naming it otherwise."""
    if isinstance(task_id, int) and not isinstance(task_id, bool) and 0 < task_id < 2**63:
        return task_id
    if isinstance(task_id, str) and _TASK_ID.match(task_id):
        return int(task_id)
    raise MediaError(f"task id {task_id!r} is not a positive integer", 422)


class MediaLoader:
    """``load(url, task_id, source)`` -> (H, W, 3) uint8 RGB array, EXIF orientation applied.

    ``cache_dir``: where downloads are kept; ``max_pixels``: largest width x height decoded;
    ``timeout``: seconds for one whole download; ``source``: the configured Label Studio (settings);
    ``policy``: what may be fetched (default: the strict one, only Label Studio's host); ``cache_bytes``:
    the cache's byte budget (SEGAGENT_MEDIA_CACHE_MB; None: unbounded).
    """

    def __init__(self, cache_dir: Path, max_pixels: int, timeout: float, source: Optional[MediaSource] = None,
                 policy: Optional[MediaPolicy] = None, cache_bytes: Optional[int] = None):
        self.cache_dir = Path(cache_dir)
        self.max_pixels = max_pixels
        self.timeout = timeout
        self.source = source or MediaSource()
        self.policy = policy or MediaPolicy()
        self.cache_bytes = cache_bytes

    def load(self, url: str, task_id: Optional[int] = None, source: Optional[MediaSource] = None) -> np.ndarray:
        path = self.fetch(url, task_id, source)
        return load_image_file(path, self.max_pixels, name=url)

    def trusted_source(self, source: Optional[MediaSource]) -> MediaSource:
        """The Label Studio to use: the configured one wins; a per-request one (what /setup said) only
        when none is configured and SEGAGENT_TRUST_SETUP is on."""
        if self.source.hostname or source is None or not self.policy.trust_setup:
            return self.source
        return source

    def fetch(self, url: str, task_id: Optional[int] = None, source: Optional[MediaSource] = None) -> Path:
        """The local path of ``url``: a local file, a cached download, or a new download."""
        if not isinstance(url, str) or not url.strip():
            raise MediaError(f"image URL {url!r} is empty", 422)
        trusted = self.trusted_source(source)
        try:
            ls = LabelStudioHost.parse(trusted.hostname)
        except PolicyRefusal:
            raise MediaError(f"the Label Studio host {trusted.hostname!r} is not an http(s) URL", 422) from None
        target = self._target(url.strip(), task_id, ls, trusted.access_token)
        if isinstance(target, Path):
            return target
        name = hashlib.sha256(target.url.encode()).hexdigest()[:32] + target.suffix
        cached = self.cache_dir / name
        if _touch(cached):
            return cached
        path = self._download(url, target, ls, trusted.access_token, name)
        self._prune(keep=path)
        return path

    def _download(self, url: str, target: "_Target", ls: Optional[LabelStudioHost], token: Optional[str],
                  name: str) -> Path:
        request = Request(target.url, ls, token, time.monotonic() + self.timeout, self.policy.max_bytes)
        try:
            try:
                return download(request, self.policy, self.cache_dir, name)
            except FetchFailed as exc:
                if not (target.fallback and exc.label_studio and exc.kind == "http"):
                    raise
                log.info("media %s: %s from Label Studio, trying %s", logtext.url(url), logtext.text(exc.reason),
                         logtext.url(target.fallback))
                fallback = Request(target.fallback, ls, token, request.deadline, request.max_bytes)
                try:
                    return download(fallback, self.policy, self.cache_dir, name)
                except FetchFailed as second:  # report the first way's failure, as the SDK does
                    log.info("media %s: the fallback failed too: %s", logtext.url(url), logtext.text(second.reason))
                    raise exc from None
        except PolicyRefusal as exc:
            log.warning("media %s refused: %s", logtext.url(url), logtext.text(exc.reason))
            raise refused(url) from None
        except FetchFailed as exc:
            log.warning("media %s could not be fetched: %s", logtext.url(url), logtext.text(exc.reason))
            raise self._failure(url, exc, ls) from None

    def _prune(self, keep: Path) -> None:
        """Delete the least recently used downloads until the cache fits ``cache_bytes`` (``keep``, the
        file just fetched, stays). Files being written (``.part-*``) are not counted. Other processes may
        prune the same folder: a file already gone is skipped."""
        if self.cache_bytes is None:
            return
        files = []
        with os.scandir(self.cache_dir) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and not entry.name.startswith(".part-"):
                        stat = entry.stat(follow_symlinks=False)
                        files.append((stat.st_mtime, stat.st_size, entry.path))
                except OSError:
                    continue
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.cache_bytes:
                break
            if path == str(keep):
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size

    def _failure(self, url: str, exc: FetchFailed, ls: Optional[LabelStudioHost]) -> MediaError:
        """What the caller sees: Label Studio's own answers in full, anyone else's never."""
        if exc.kind == "too-large":
            return MediaError(f"image URL {url!r} is larger than SEGAGENT_MEDIA_MAX_MB="
                              f"{self.policy.max_bytes // 2**20}", 413)
        if exc.kind == "not-an-image":
            hint = " (check LABEL_STUDIO_API_KEY: without it Label Studio answers with its login page)" \
                if exc.label_studio else ""
            return MediaError(f"image URL {url!r} did not lead to an image (Content-Type is not image/*){hint}", 422)
        if exc.label_studio and ls is not None:
            if exc.kind == "http":
                hint = " (check LABEL_STUDIO_API_KEY)" if exc.status in (401, 403) else ""
                return MediaError(
                    f"image {url!r} could not be downloaded from Label Studio: HTTP {exc.status}{hint}", 502)
            # our words only: requests' text names the internal URL, and a reset is not a timeout
            what = f"no answer within SEGAGENT_MEDIA_TIMEOUT={self.timeout:g} s" if exc.kind == "timeout" \
                else exc.words
            return MediaError(f"image {url!r} could not be downloaded from Label Studio (LABEL_STUDIO_URL): {what}",
                              502)
        return MediaError(f"image URL {url!r} could not be fetched", 502)

    def _target(self, url: str, task_id: Any, ls: Optional[LabelStudioHost], token: Optional[str]) -> "_Target | Path":
        """Where ``url`` is fetched from (or the local file it names)."""
        if url.startswith(("upload/", "/upload/")):
            url = "/data/" + url.lstrip("/")
        if url.lower().startswith(CLOUD_PREFIXES):
            if task_id is None:
                raise MediaError(f"cloud storage image {url!r} needs its Label Studio Task ID to be presigned", 422)
            tid = check_task_id(task_id)
            label_studio = self._require(url, ls, token)
            presign = label_studio.join(f"/tasks/{tid}/presign/?fileuri={quote(url, safe='')}")
            return _Target(presign, True, suffix=_suffix(urlsplit(url).path))
        if url.startswith("/"):
            return self._label_studio_path(url, url, ls, token)
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise MediaError(f"image URL {url!r} is not an http(s), Label Studio or cloud storage URL", 422)
        try:
            origin = Origin.of(url)
        except PolicyRefusal as exc:
            raise MediaError(f"image URL {url!r} cannot be fetched: {exc.reason}", 422) from None
        if ls is not None and ls.owns(url):
            relative = ls.relative_path(url)
            if relative is not None:
                query = urlsplit(url).query
                return self._label_studio_path(url, relative + ("?" + query if query else ""), ls, token,
                                               absolute=url)
            return _Target(url, True, suffix=_suffix(urlsplit(url).path))
        if not self.policy.host_allowed(origin):
            log.warning("media %s refused: %s:%d is not in %s", logtext.url(url), logtext.text(origin.host),
                        origin.port, ALLOW_HOSTS)
            raise refused(url)
        return _Target(url, False, suffix=_suffix(urlsplit(url).path))

    def _label_studio_path(self, url: str, path: str, ls: Optional[LabelStudioHost], token: Optional[str],
                           absolute: Optional[str] = None) -> "_Target | Path":
        """A path on Label Studio (``/data/upload/..``, ``/data/local-files/?d=..``, ...)."""
        relative = local_files_param(path)
        if relative is not None and self.policy.local_files_root is not None:
            try:
                found = resolve_local_file(relative, self.policy.local_files_root)
            except OutsideRoot as exc:
                log.warning("media %s refused: %s", logtext.url(url), logtext.text(exc.reason))
                raise MediaError(f"image {url!r} is outside LOCAL_FILES_DOCUMENT_ROOT", 422) from None
            if found is not None:
                return found
        media = relative is not None or path.startswith((_UPLOAD, _STORAGE_PROXY))
        if absolute is not None:  # a full URL on Label Studio's host: fetched as given
            return _Target(absolute, True, suffix=_suffix(PurePosixPath(relative or urlsplit(path).path).name))
        if not media:
            raise MediaError(f"image URL {url!r} is not an http(s), Label Studio or cloud storage URL", 422)
        if any(segment in (".", "..") for segment in unquote(urlsplit(path).path).split("/")):
            raise MediaError(f"image URL {url!r} has '.' or '..' in its path", 422)
        label_studio = self._require(url, ls, token)
        fallback = None
        if path.startswith(_UPLOAD):  # the SDK's second way to an upload: Label Studio's storage proxy
            fallback = label_studio.join(f"{_STORAGE_PROXY}?filepath={quote(urlsplit(path).path[len('/data/'):])}")
        name = PurePosixPath(relative).name if relative is not None else PurePosixPath(urlsplit(path).path).name
        return _Target(label_studio.join(path), True, fallback, _suffix(name))

    @staticmethod
    def _require(url: str, ls: Optional[LabelStudioHost], token: Optional[str]) -> LabelStudioHost:
        if ls is None:
            raise MediaError(
                f"image {url!r} is a Label Studio file, but no Label Studio host is known: set LABEL_STUDIO_URL "
                "and LABEL_STUDIO_API_KEY (or SEGAGENT_TRUST_SETUP=true to use the host Label Studio sends to /setup)",
                422)
        if not token:
            raise MediaError(f"image {url!r} is a Label Studio file: set LABEL_STUDIO_API_KEY to download it", 422)
        return ls


def refused(url: str) -> MediaError:
    """The one answer for a URL the policy refuses (host not allowed, or one of its addresses)."""
    return MediaError(
        f"image URL {url!r} is not allowed: its host is not Label Studio's and not allowed by {ALLOW_HOSTS} "
        f"(hosts on private, loopback or link-local addresses also need {ALLOW_PRIVATE}=true)", 422)


def _suffix(name: str) -> str:
    suffix = os.path.splitext(name)[1]
    return suffix.lower() if _SUFFIX.match(suffix) else ""


def load_image_file(path: str | os.PathLike, max_pixels: int, name: Optional[str] = None) -> np.ndarray:
    """Decode an image file -> (H, W, 3) uint8 RGB, EXIF orientation applied, at most ``max_pixels``."""
    name = name or str(path)
    try:
        with Image.open(path) as img:
            width, height = img.size  # read from the header: refuse before decoding the pixels
            if width * height > max_pixels:
                raise MediaError(
                    f"image {name!r} has {width}x{height} = {width * height} pixels, more than "
                    f"SEGAGENT_MAX_IMAGE_PIXELS={max_pixels}", 413)
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(f"image {name!r} does not exist", 422) from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        # PIL's message names the file's path on this server: the log may have it, the caller not
        log.info("image %s is not readable: %s", logtext.url(name), logtext.text(exc))
        raise MediaError(f"{name!r} is not a readable image (not a format we decode, or damaged)", 422) from None


def _touch(path: Path) -> bool:
    """Mark a cached file used now (the cache drops the least recently used first); False when absent."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return path.is_file()
