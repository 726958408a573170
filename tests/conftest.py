"""Shared fixtures: settings, the app, a real local HTTP server for task images, synthetic images.

Everything is real: images travel over HTTP through the media loader, masks are checked
with the SDK's own RLE decoder, Redis is the one `make test` provides (REDIS_URL).
"""
from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tests' image servers listen on 127.0.0.1: the media policy refuses loopback hosts unless allowed.
# Here (and in the subprocesses: workers, gunicorn, the CLI) they are; tests/service/test_media_policy.py
# checks the strict defaults.
MEDIA_ENV = {"SEGAGENT_MEDIA_ALLOW_HOSTS": "127.0.0.1", "SEGAGENT_MEDIA_ALLOW_PRIVATE": "true"}
for _key, _value in MEDIA_ENV.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
# the tiny random models, one session-scoped fixture each (tests/fixtures/models.py)
pytest_plugins = ["tests.fixtures.models"]
# The Redis `make test` provides reaches tests only through the `redis_url` fixture, each with its own queue
# prefix: a test that runs the service or the CLI in-process must not read (or leave) the shared Redis's
# default-prefix announcements (a promoted version announced there would leak into every later test).
SUITE_REDIS_URL = os.environ.pop("REDIS_URL", None)


def make_disk_image(width: int = 160, height: int = 120, centre=(80, 60), radius: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey-green background with a red disk: (H, W, 3) uint8 RGB image and its (H, W) bool mask."""
    rng = np.random.default_rng(0)
    image = np.empty((height, width, 3), np.uint8)
    image[...] = (70, 110, 80)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    mask = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2
    image[mask] = np.clip(np.array([200, 40, 40]) + rng.normal(0, 6, (mask.sum(), 3)), 0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture(scope="session")
def disk_image():
    return make_disk_image()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory, disk_image):
    """A folder served over HTTP holding ``disk.png``, ``not-an-image.png`` and more added by tests."""
    root = tmp_path_factory.mktemp("media")
    Image.fromarray(disk_image[0]).save(root / "disk.png")
    (root / "not-an-image.png").write_bytes(b"this is text, not a PNG")
    return root


@pytest.fixture(scope="session")
def media_server(media_dir):
    """Base URL of a real HTTP server on 127.0.0.1 serving ``media_dir``."""
    handler = functools.partial(QuietHandler, directory=str(media_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def make_settings(tmp_path):
    """Settings as the service reads them, from a dict of environment variables (nothing leaks in)."""
    from segagent_backend.settings import Settings

    def make(**env):
        base = {"MODEL_DIR": str(tmp_path / "models"), "SEGAGENT_PRELOAD": "false", **MEDIA_ENV}
        base.update({k: str(v) for k, v in env.items()})
        return Settings.from_env(base)

    return make


@pytest.fixture
def make_client(make_settings):
    from segagent_backend.app import create_app

    def make(**env):
        return create_app(make_settings(**env)).test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture(scope="session")
def grabcut_dir() -> Path:
    """The GrabCut set (trainer.datasets.default_grabcut_dir: SEGAGENT_GRABCUT_DIR, default
    ../shared/datasets/grabcut); skipped when absent."""
    from trainer.datasets import default_grabcut_dir

    root = default_grabcut_dir(REPO)
    if not (root / "manifest.json").is_file():
        pytest.skip(f"GrabCut set not found at {root} (set SEGAGENT_GRABCUT_DIR)")
    return root


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis `make test` provides; skipped with a reason when the suite runs without it."""
    url = SUITE_REDIS_URL
    if not url:
        pytest.skip("REDIS_URL is not set: run the suite with `make test`, which provides a Redis")
    return url
