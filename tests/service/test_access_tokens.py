"""Personal access tokens (PATs): exchanged for access tokens, cached until shortly before their exp,
renewed once after a 401, and sent only to Label Studio; legacy tokens as they are.

A real HTTP server on 127.0.0.1 stands in for Label Studio's token endpoint (``/ls/api/token/refresh/``,
below a base path), an upload and one API path: it mints access tokens (JWTs with an exp), takes only
those it has not revoked, and records every request. The end-to-end proof against a real Label Studio
is tests/e2e/test_personal_access_tokens.py.
"""
from __future__ import annotations

import http.server
import io
import json
import logging
import threading
import time
import uuid
from typing import Optional

import jwt
import pytest
from PIL import Image

from segagent_backend.errors import MediaError
from segagent_backend.labelstudio.client import label_studio
from segagent_backend.media import MediaLoader, MediaPolicy, MediaSource
from segagent_backend.media.access_tokens import (MARGIN_S, Credentials, TokenExchangeFailed, credentials,
                                                  renew_at)
from segagent_backend.settings import Settings

BASE = "/ls"  # Label Studio served below a base path
LEGACY = "0123456789abcdef0123456789abcdef01234567"


def make_jwt(token_type: str, lifetime: float) -> str:
    claims = {"token_type": token_type, "exp": int(time.time() + lifetime), "jti": uuid.uuid4().hex}
    return jwt.encode(claims, "not Label Studio's signing key, 32 bytes or more", algorithm="HS256")


def make_pat(lifetime: float = 3600) -> str:
    return make_jwt("refresh", lifetime)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


class FakeLabelStudio(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.valid: set[str] = set()  # access tokens it takes
        self.seen: list[dict] = []
        self.lifetime = 300.0  # of the access tokens it mints
        self.delay = 0.0  # before answering an exchange
        self.refuse = False  # exchanges answer 401 (a revoked PAT)
        self.redirect_to = ""  # exchanges answer 302 to this URL
        self.deny = False  # every GET answers 401, whatever its token
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:  # a client that closed a refused answer early
        pass

    def exchanges(self) -> list[dict]:
        return [r for r in self.seen if r["method"] == "POST"]

    def gets(self) -> list[dict]:
        return [r for r in self.seen if r["method"] == "GET"]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeLabelStudio

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes, kind: str = "application/json", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def record(self, body: Optional[dict] = None) -> None:
        with self.server.lock:
            self.server.seen.append({"method": self.command, "path": self.path, "body": body,
                                     "auth": self.headers.get("Authorization")})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.record(body)
        server = self.server
        if self.path != f"{BASE}/api/token/refresh/":
            return self.send(404, b"{}")
        time.sleep(server.delay)
        if server.redirect_to:
            return self.send(302, b"", "text/plain", Location=server.redirect_to)
        if server.refuse:
            return self.send(401, b'{"detail": "Token is blacklisted", "code": "token_not_valid"}')
        access = make_jwt("access", server.lifetime)
        with server.lock:
            server.valid.add(access)
        self.send(200, json.dumps({"access": access}).encode())

    def do_GET(self) -> None:
        self.record()
        auth = self.headers.get("Authorization") or ""
        if self.server.deny or not (auth.startswith("Bearer ") and auth[len("Bearer "):] in self.server.valid):
            return self.send(401, b'{"detail": "Given token not valid for any token type"}')
        if self.path.startswith(f"{BASE}/data/upload/"):
            return self.send(200, png(), "image/png")
        if self.path.startswith(f"{BASE}/api/projects/1"):
            return self.send(200, json.dumps({"id": 1, "title": "p"}).encode())
        self.send(404, b"{}")


@pytest.fixture
def ls():
    server = FakeLabelStudio()
    yield server
    server.shutdown()
    server.server_close()


def loader(tmp_path, ls: FakeLabelStudio, key: str) -> MediaLoader:
    return MediaLoader(tmp_path / "cache", 1_000_000, 5, MediaSource(ls.url + BASE, key), MediaPolicy())


# ----- Credentials: the header for a key ---------------------------------------------------------------
def test_a_legacy_token_is_sent_as_a_token_without_an_exchange(ls):
    creds = Credentials(ls.url + BASE, LEGACY)
    assert creds.header() == f"Token {LEGACY}"
    assert creds.rejected(f"Token {LEGACY}") is False  # nothing to renew: no retry
    assert ls.seen == []


def test_a_pat_is_exchanged_once_at_label_studio_and_its_access_token_kept(ls):
    pat = make_pat()
    creds = Credentials(ls.url + BASE, pat)
    first = creds.header()
    assert first.startswith("Bearer ") and first != f"Bearer {pat}"
    assert creds.header() == first
    (exchange,) = ls.exchanges()
    assert exchange["path"] == f"{BASE}/api/token/refresh/" and exchange["body"] == {"refresh": pat}
    assert exchange["auth"] is None  # the PAT travels only in the body


def test_an_access_token_is_renewed_before_its_exp():
    now = time.time()
    assert renew_at(make_jwt("access", 3600), now) == pytest.approx(int(now + 3600) - MARGIN_S)
    short = make_jwt("access", 10)  # lives shorter than twice the margin: renewed halfway
    exp = jwt.decode(short, options={"verify_signature": False})["exp"]
    assert renew_at(short, now) == pytest.approx(exp - (exp - now) / 2)
    assert renew_at("not-a-jwt", now) == float("inf")  # no exp to read: kept until Label Studio refuses it


def test_an_access_token_at_its_exp_is_not_used_again(ls):
    ls.lifetime = 0
    creds = Credentials(ls.url + BASE, make_pat())
    assert creds.header() != creds.header()
    assert len(ls.exchanges()) == 2


def test_threads_share_one_exchange(ls):
    ls.delay = 0.3
    creds = Credentials(ls.url + BASE, make_pat())
    start, headers = threading.Barrier(8), []

    def ask() -> None:
        start.wait()
        headers.append(creds.header())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(headers)) == 1 and len(headers) == 8
    assert len(ls.exchanges()) == 1


def test_a_thread_waiting_past_its_deadline_for_an_exchange_gives_up(ls):
    ls.delay = 1.0
    creds = Credentials(ls.url + BASE, make_pat())
    slow = threading.Thread(target=creds.header)
    slow.start()
    time.sleep(0.2)
    with pytest.raises(TokenExchangeFailed) as caught:
        creds.header(timeout=0.2)
    assert caught.value.kind == "timeout"
    slow.join()


def test_an_exchange_follows_no_redirect(ls):
    other = FakeLabelStudio()
    try:
        ls.redirect_to = other.url + f"{BASE}/api/token/refresh/"
        with pytest.raises(TokenExchangeFailed) as caught:
            Credentials(ls.url + BASE, make_pat()).header()
        assert caught.value.kind == "bad-answer" and other.seen == []
    finally:
        other.shutdown()
        other.server_close()


def test_credentials_are_shared_per_label_studio_and_key(ls):
    pat = make_pat()
    assert credentials(ls.url + BASE, pat) is credentials(ls.url + BASE + "/", pat)
    assert credentials(ls.url + BASE, pat) is not credentials(ls.url, pat)


# ----- media downloads -------------------------------------------------------------------------------
def test_a_download_with_a_pat_sends_an_access_token(tmp_path, ls):
    pat = make_pat()
    assert loader(tmp_path, ls, pat).load("/data/upload/1/a.png").shape == (6, 8, 3)
    (get,) = ls.gets()
    assert get["path"] == f"{BASE}/data/upload/1/a.png" and get["auth"].startswith("Bearer ")
    assert get["auth"] != f"Bearer {pat}" and len(ls.exchanges()) == 1


def test_a_401_renews_the_access_token_and_retries_once(tmp_path, ls):
    media = loader(tmp_path, ls, make_pat())
    media.load("/data/upload/1/a.png")
    ls.valid.clear()  # Label Studio no longer takes the kept access token (clocks apart, a restart)
    assert media.load("/data/upload/1/b.png").shape == (6, 8, 3)
    first, stale, renewed = (g["auth"] for g in ls.gets())
    assert stale == first and renewed != first
    assert len(ls.exchanges()) == 2


def test_a_second_401_is_the_callers_error(tmp_path, ls, caplog):
    pat = make_pat()
    media = loader(tmp_path, ls, pat)
    media.load("/data/upload/1/a.png")
    ls.deny = True  # Label Studio refuses the new access token too
    with caplog.at_level(logging.DEBUG), pytest.raises(MediaError) as caught:
        media.load("/data/upload/1/b.png")
    assert caught.value.status == 502 and "HTTP 401 (check LABEL_STUDIO_API_KEY)" in str(caught.value)
    upload, proxy = f"{BASE}/data/upload/1/b.png", f"{BASE}/storage-data/uploaded/?filepath=upload/1/b.png"
    # each way to an upload (the file, then Label Studio's storage proxy) is refused, retried once, refused
    assert [g["path"] for g in ls.gets()[1:]] == [upload, upload, proxy, proxy]
    assert pat not in caplog.text and "Bearer" not in caplog.text


def test_a_refused_exchange_is_reported_and_logs_no_token(tmp_path, ls, caplog):
    ls.refuse = True  # a revoked PAT
    pat = make_pat()
    with caplog.at_level(logging.DEBUG), pytest.raises(MediaError) as caught:
        loader(tmp_path, ls, pat).load("/data/upload/1/a.png")
    assert caught.value.status == 502 and "HTTP 401 (check LABEL_STUDIO_API_KEY)" in str(caught.value)
    assert ls.gets() == [] and pat not in caplog.text and pat not in str(caught.value)


def test_an_expired_pat_is_refused_without_asking(tmp_path, ls):
    with pytest.raises(MediaError) as caught:
        loader(tmp_path, ls, make_pat(lifetime=-60)).load("/data/upload/1/a.png")
    assert "HTTP 401" in str(caught.value) and ls.seen == []


def test_a_pat_is_not_exchanged_for_images_elsewhere(tmp_path, ls):
    """Only Label Studio's media and API paths get a token: an image elsewhere on its origin (or on another
    allowed host) is fetched without one, and no exchange is made for it."""
    with pytest.raises(MediaError):
        loader(tmp_path, ls, make_pat()).load(f"{ls.url}/elsewhere.png")
    (get,) = ls.seen
    assert get["auth"] is None


# ----- SDK clients ------------------------------------------------------------------------------------
def sdk(ls: FakeLabelStudio, key: str, tmp_path):
    return label_studio(Settings.from_env({"LABEL_STUDIO_URL": ls.url + BASE, "LABEL_STUDIO_API_KEY": key,
                                           "MODEL_DIR": str(tmp_path / "models")}))


def test_the_sdk_client_exchanges_below_the_base_path_and_retries_a_401(ls, tmp_path):
    client = sdk(ls, make_pat(), tmp_path)
    assert client.projects.get(id=1).id == 1
    assert {e["path"] for e in ls.exchanges()} == {f"{BASE}/api/token/refresh/"}
    ls.valid.clear()  # the access token the SDK would keep to its exp is no longer taken
    assert client.projects.get(id=1).id == 1
    refused, renewed = [g["auth"] for g in ls.gets()][-2:]
    assert refused != renewed


def test_the_sdk_client_sends_a_legacy_token_as_it_is(ls, tmp_path):
    with pytest.raises(Exception) as caught:  # the fake takes only access tokens
        sdk(ls, LEGACY, tmp_path).projects.get(id=1)
    assert getattr(caught.value, "status_code", None) == 401
    assert [g["auth"] for g in ls.gets()] == [f"Token {LEGACY}"] and ls.exchanges() == []
