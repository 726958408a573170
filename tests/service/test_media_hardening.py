"""Issue 23's media findings, each attack replayed against the real app (Flask, real loopback servers):
replies in our words (a non-image local file, a connection reset from Label Studio), the key never on
Label Studio's /api/, log fields on one line without presigned queries, and a media cache that shrinks."""
from __future__ import annotations

import hashlib
import http.server
import io
import logging
import socket
import struct
import threading

import numpy as np
import pytest
from PIL import Image

from payloads import keypoint, predict_body

TOKEN = "tok-hardening-123"


class LabelStudio(http.server.ThreadingHTTPServer):
    """Plays Label Studio on 127.0.0.1: answers with a PNG (or, for /api/, a JSON export) and records
    every request's path and Authorization header."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/api/"):  # what the key would open: 200 with it, 401 without
            ok = self.headers.get("Authorization") == f"Token {TOKEN}"
            body, kind, status = (b'{"exported": "everything"}', "application/json", 200 if ok else 401)
        else:
            buf = io.BytesIO()
            Image.new("RGB", (160, 120), (200, 40, 40)).save(buf, "PNG")
            body, kind, status = buf.getvalue(), "image/png", 200
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def label_studio():
    server = LabelStudio()
    yield server
    server.shutdown()


@pytest.fixture
def resetting_label_studio():
    """A "Label Studio" that reads each request and resets the connection (RST, no answer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def click(url: str) -> dict:
    return predict_body(url, [keypoint(50, 50, 160, 120)])


def error_of(reply) -> str:
    """The task's error: the whole reply's when every task failed."""
    assert reply.is_json, reply.data[:200]
    return reply.json.get("error") or reply.json["results"][0]["error"]


# --- 5. replies in our words --------------------------------------------------------------------------

def test_a_non_image_local_file_names_neither_the_path_nor_pil(make_client, tmp_path):
    root = tmp_path / "document-root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "notes.png").write_text("a text file named like an image")
    client = make_client(LOCAL_FILES_DOCUMENT_ROOT=str(root))
    reply = client.post("/predict", json=click("/data/local-files/?d=sub/notes.png"))
    assert reply.status_code == 422
    message = error_of(reply)
    assert "not a readable image" in message and "/data/local-files/?d=sub/notes.png" in message
    for leak in (str(root), str(tmp_path), "cannot identify", "UnidentifiedImageError", "<_io."):
        assert leak not in reply.get_data(as_text=True), (leak, message)


def test_a_connection_reset_by_label_studio_is_named_as_such(make_client, resetting_label_studio, caplog):
    client = make_client(LABEL_STUDIO_URL=resetting_label_studio, LABEL_STUDIO_API_KEY=TOKEN)
    with caplog.at_level(logging.WARNING, logger="segagent_backend"):
        reply = client.post("/predict", json=click("/data/upload/3/a.png"))
    assert reply.status_code == 502
    message = error_of(reply)
    assert message == ("image '/data/upload/3/a.png' could not be downloaded from Label Studio (LABEL_STUDIO_URL): "
                       "the connection was reset")
    text = reply.get_data(as_text=True)
    for leak in (resetting_label_studio, "127.0.0.1", "timed out", "ConnectionError", "ProtocolError",
                 "Connection aborted", "104", "Errno", TOKEN):
        assert leak not in text, (leak, text)
    # the operator still finds what requests said, in the log
    assert any("ConnectionResetError" in r.getMessage() for r in caplog.records)


# --- 6. the key never on Label Studio's /api/ -----------------------------------------------------------

def test_a_task_url_on_label_studios_api_is_fetched_without_the_key(make_client, label_studio):
    client = make_client(LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=TOKEN)
    probes = [f"{label_studio.url}/api/projects/3/export?exportType=JSON", f"{label_studio.url}/api/tasks/5/",
              f"{label_studio.url}/api/projects/999999/"]
    answers = set()
    for url in probes:
        reply = client.post("/predict", json=click(url))
        assert reply.status_code == 502, reply.json
        answers.add(error_of(reply).replace(url, "<url>"))
    # every /api/ probe reads the same (Label Studio refused the unauthenticated GET): nothing to enumerate
    assert len(answers) == 1 and "HTTP 401" in answers.pop()
    assert [auth for _, auth in label_studio.seen] == [None, None, None]
    # its media paths still get the key
    assert client.post("/predict", json=click("/data/upload/3/a.png")).status_code == 200
    assert label_studio.seen[-1] == ("/data/upload/3/a.png", f"Token {TOKEN}")


# --- 7. log fields escaped ------------------------------------------------------------------------------

FORGED = "2026-01-01 00:00:00,000 ERROR segagent_backend.app: FORGED LINE"


@pytest.mark.parametrize("url", [
    f"http://refused.example/a.png?x=1\n{FORGED}",
    f"http://refused.example/a\u2028{FORGED}.png",
    f"http://refused.example/a\x1b[2J\x1b[H{FORGED}.png",
    f"http://refused.example/a\r{FORGED}.png",
])
def test_a_newline_in_an_image_url_forges_no_log_line(make_client, caplog, url):
    client = make_client()
    with caplog.at_level(logging.INFO):
        reply = client.post("/predict", json=click(url))
    assert reply.status_code == 422
    logged = [r.getMessage() for r in caplog.records]
    assert any("refused" in m for m in logged), logged
    for message in logged:
        assert message.isprintable(), repr(message)  # no newline, CR, U+2028 or ESC: one line, as written


def test_presigned_queries_stay_out_of_the_log_but_local_file_names_do_not(make_client, tmp_path, caplog):
    client = make_client(SEGAGENT_MEDIA_ALLOW_HOSTS="")  # 127.0.0.1 not allowed: refused and logged
    signed = "http://127.0.0.1:9/bucket/a.png?X-Amz-Signature=SIGNATURE-SECRET&X-Amz-Credential=CRED-SECRET"
    root = tmp_path / "root"
    root.mkdir()
    local = make_client(LOCAL_FILES_DOCUMENT_ROOT=str(root))
    with caplog.at_level(logging.INFO):
        client.post("/predict", json=click(signed))
        local.post("/predict", json=click("/data/local-files/?d=../outside/private.png"))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SIGNATURE-SECRET" not in logged and "CRED-SECRET" not in logged
    assert "http://127.0.0.1:9/bucket/a.png" in logged
    assert "d=..%2Foutside%2Fprivate.png" in logged  # which local file was refused: still identifiable


# --- 8. the media cache shrinks -------------------------------------------------------------------------

def test_thirty_query_strings_on_one_url_stay_within_the_cache_budget(make_client, make_settings, media_dir,
                                                                       media_server):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(media_dir / "noise.png")
    size = (media_dir / "noise.png").stat().st_size  # ~360 KB: incompressible
    client = make_client(SEGAGENT_MEDIA_CACHE_MB=1)
    cache = make_settings().media_cache_dir
    for i in range(30):
        body = predict_body(f"{media_server}/noise.png?v={i}", [keypoint(50, 50, 400, 300)])
        assert client.post("/predict", json=body).status_code == 200
        files = list(cache.iterdir())
        assert sum(f.stat().st_size for f in files) <= 2**20, (i, len(files))
    assert len(files) == 2**20 // size  # as many as fit, not thirty
    # the least recently used go first: v28, used again, outlives v29 when v30 arrives
    names = {i: hashlib.sha256(f"{media_server}/noise.png?v={i}".encode()).hexdigest()[:32] + ".png"
             for i in (28, 29, 30)}
    assert {f.name for f in files} == {names[28], names[29]}
    for i in (28, 30):
        client.post("/predict", json=predict_body(f"{media_server}/noise.png?v={i}", [keypoint(50, 50, 400, 300)]))
    assert {f.name for f in cache.iterdir()} == {names[28], names[30]}
