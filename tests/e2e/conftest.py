"""Fixtures of the end-to-end tests: one Label Studio server for the session, the backend beside it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from PIL import Image

from servers import REPO, serve_backend, start_label_studio, stop


@pytest.fixture(scope="session")
def label_studio_bin() -> str:
    path = os.environ.get("LABEL_STUDIO_BIN") or str(REPO / ".venv-ls" / "bin" / "label-studio")
    if not Path(path).exists():
        pytest.skip(f"no Label Studio server at {path}: `make test` installs it (.venv-ls)")
    return path


@pytest.fixture(scope="session")
def files_root(tmp_path_factory, disk_image) -> Path:
    root = tmp_path_factory.mktemp("ls-files")
    (root / "images").mkdir()
    Image.fromarray(disk_image[0]).save(root / "images" / "disk.png")
    return root


@pytest.fixture(scope="module")
def backend_server(label_studio, tmp_path_factory):
    """(URL, process) of the backend with the default tools and no policy."""
    url, proc = serve_backend(label_studio, tmp_path_factory.mktemp("models"))
    yield url, proc
    stop(proc)


@pytest.fixture(scope="module")
def backend(backend_server) -> str:
    return backend_server[0]


@pytest.fixture(scope="module")
def backend_process(backend_server):
    """The backend's process: ``servers.log_tail(process)`` reads its log."""
    return backend_server[1]


@pytest.fixture(scope="session")
def label_studio(label_studio_bin, files_root, tmp_path_factory):
    """(base URL, legacy API token) of a fresh Label Studio server on a free loopback port."""
    server, proc = start_label_studio(label_studio_bin, files_root, tmp_path_factory.mktemp("ls-data"))
    yield server
    stop(proc)


@pytest.fixture(scope="module")
def pat(label_studio):
    """A PAT of the e2e user, made with its legacy token; revoked afterwards so another can be made."""
    url, token = label_studio
    legacy = {"Authorization": f"Token {token}"}
    made = requests.post(f"{url}/api/token/", headers=legacy, timeout=30)
    assert made.status_code == 201, made.text[:500]
    pat = made.json()["token"]
    yield pat
    revoked = requests.post(f"{url}/api/token/blacklist/", json={"refresh": pat}, headers=legacy, timeout=30)
    assert revoked.status_code == 204, revoked.text[:500]
