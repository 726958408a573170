"""Task images: fetched through the SDK's ``get_local_path``, decoded, EXIF-oriented, size-checked.

Handles everything Label Studio puts in task data: ``/data/upload/..``, ``/data/local-files/?d=..``,
``s3://``/``gs://``/``azure-blob://`` (presigned through Label Studio, needs the task id) and
http(s) URLs. Downloads are cached under ``MODEL_DIR/cache/media``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path, http_session
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MediaError

log = logging.getLogger(__name__)


class _TimeoutSession(requests.Session):
    """A session whose requests time out (the SDK's downloads have no timeout of their own)."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, **kwargs)


@dataclass
class MediaSource:
    """Where Label Studio lives for downloads of uploaded, local-storage and cloud files."""

    hostname: Optional[str] = None
    access_token: Optional[str] = None


class MediaLoader:
    """``load(url, task_id)`` -> (H, W, 3) uint8 RGB array, EXIF orientation applied."""

    def __init__(self, cache_dir: Path, max_pixels: int, timeout: float, source: MediaSource = MediaSource()):
        self.cache_dir = Path(cache_dir)
        self.max_pixels = max_pixels
        self.timeout = timeout
        self.source = source

    def load(self, url: str, task_id: Optional[int] = None, source: Optional[MediaSource] = None) -> np.ndarray:
        path = self.fetch(url, task_id, source or self.source)
        return load_image_file(path, self.max_pixels, name=url)

    def fetch(self, url: str, task_id: Optional[int], source: MediaSource) -> str:
        """The local path of ``url``, downloading it into the cache when needed."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            with http_session(_TimeoutSession(self.timeout)):
                return get_local_path(
                    url,
                    cache_dir=str(self.cache_dir),
                    hostname=source.hostname or "",
                    access_token=source.access_token or "",
                    task_id=task_id,
                )
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            hint = " (check LABEL_STUDIO_API_KEY)" if status in (401, 403) else ""
            raise MediaError(f"image {url!r} could not be downloaded: HTTP {status}{hint}", 502) from None
        except requests.RequestException as exc:
            raise MediaError(f"image {url!r} is unreachable: {type(exc).__name__}: {exc}", 502) from None
        except (FileNotFoundError, ValueError) as exc:
            raise MediaError(f"image {url!r} cannot be resolved: {exc}", 422) from None
        except Exception as exc:  # the SDK raises bare Exception for e.g. a cloud URL without task id
            raise MediaError(f"image {url!r} cannot be fetched: {exc}", 422) from None


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
        raise MediaError(f"{name!r} is not a readable image: {exc}", 422) from None
