"""The media policy against real loopback HTTP servers: which hosts and addresses may be fetched, where the
Label Studio token goes, redirects, the one deadline, the byte cap, neutral errors, local files, /setup.

Two servers on 127.0.0.1 (two origins): ``ls`` plays Label Studio (and an "internal" server), ``other``
an allowed or refused second host. Both record every request they get. Refusals of private and
cloud-metadata addresses are proven with an injected resolver and without any socket connecting.
"""
from __future__ import annotations

import http.server
import io
import socket
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image

from segagent_backend.errors import MediaError
from segagent_backend.labelstudio.sources import ProjectSources
from segagent_backend.media import MediaLoader, MediaPolicy, MediaSource
from segagent_backend.media.policy import HostRule, LabelStudioHost, address_refusal

TOKEN = "tok-123"
SECRET = "internal-secret-words"


def png(width: int = 8, height: int = 6, colour=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1"):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), Handler)
        self.seen: list[dict] = []
        self.redirect_to = ""  # where /tasks/<id>/presign/ and /data/upload/9/.. redirect
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.server_address[1]}"

    def handle_error(self, request, client_address):  # a client that gave up (deadline, byte cap)
        pass

    def paths(self) -> list[str]:
        return [r["path"] for r in self.seen]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status: int, body: bytes, kind: str | None = "image/png", **headers) -> None:
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: C901 - one route table
        server: Recorder = self.server
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"),
                            "host": self.headers.get("Host")})
        route = parts.path
        try:
            if route in ("/img.png", "/api/img.png", "/data/local-files/"):
                self.send(200, png())
            elif route == "/octet":
                self.send(200, png(), "application/octet-stream")
            elif route == "/untyped":
                self.send(200, png(), None)
            elif route == "/redirect":
                self.send(302, b"", None, Location=query["to"][0])
            elif route.startswith("/data/upload/9/") or route.startswith("/tasks/"):
                self.send(302, b"", None, Location=server.redirect_to)
            elif route.startswith("/data/upload/"):
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    self.send(401, b'{"detail": "no"}', "application/json")
                else:
                    self.send(200, png(colour=(1, 2, 3)))
            elif route == "/trickle":  # 1 byte a second of a declared 1000-byte image
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(1)
            elif route == "/hang":  # no answer at all for 30 s
                time.sleep(30)
            elif route == "/big":  # declared too large
                self.send(200, b"\0" * (3 * 2**20))
            elif route == "/big-unsized":  # too large, no Content-Length (ends when the connection closes)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(48):
                    self.wfile.write(b"\0" * 65536)
                self.close_connection = True
            elif route == "/page":
                self.send(200, f"<html>{SECRET}</html>".encode(), "text/html")
            else:
                self.send(404, f"Not Found: {SECRET}".encode(), "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def ls():
    server = Recorder()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def other():
    server = Recorder()
    yield server
    server.shutdown()


@pytest.fixture(autouse=True)
def forget(ls, other):
    ls.seen.clear()
    other.seen.clear()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loader(tmp_path, allow: str = "", private: bool = False, ls_url: str | None = None, timeout: float = 5,
           **policy) -> MediaLoader:
    return MediaLoader(tmp_path / "cache", 1_000_000, timeout, MediaSource(ls_url, TOKEN if ls_url else None),
                       MediaPolicy.build(allow, allow_private=private, **policy))


def cached(tmp_path) -> list[Path]:
    """Every file of the cache folder (temporary ones included)."""
    folder = tmp_path / "cache"
    return list(folder.iterdir()) if folder.exists() else []


def port(server: Recorder) -> int:
    return server.server_address[1]


def refused(call) -> MediaError:
    with pytest.raises(MediaError) as err:
        call()
    assert err.value.status == 422, err.value.message
    assert "not allowed" in err.value.message and "SEGAGENT_MEDIA_ALLOW_HOSTS" in err.value.message
    return err.value


def no_connect(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a refused address must not be connected to")
    monkeypatch.setattr(socket.socket, "connect", fail)
    monkeypatch.setattr(socket, "create_connection", fail)


# --- hosts and addresses -------------------------------------------------------------------------------

def test_a_host_outside_the_allow_list_is_refused_before_any_request(tmp_path, other):
    refused(lambda: loader(tmp_path).load(f"{other.url}/img.png"))
    refused(lambda: loader(tmp_path, "example.org", private=True).load(f"{other.url}/img.png"))
    refused(lambda: loader(tmp_path, f"127.0.0.1:{port(other) + 1}", private=True).load(f"{other.url}/img.png"))
    assert other.seen == []


def test_a_listed_loopback_host_still_needs_allow_private(tmp_path, other):
    refused(lambda: loader(tmp_path, f"127.0.0.1:{port(other)}").load(f"{other.url}/img.png"))
    refused(lambda: loader(tmp_path, "*").load(f"{other.url}/img.png"))  # * = any PUBLIC host
    assert other.seen == []
    image = loader(tmp_path, f"127.0.0.1:{port(other)}", private=True).load(f"{other.url}/img.png")
    assert image.shape == (6, 8, 3) and image.dtype == np.uint8
    assert other.paths() == ["/img.png"]


def test_ipv6_loopback(tmp_path):
    try:
        server = Recorder("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        refused(lambda: loader(tmp_path, "[::1]").load(f"{server.url}/img.png"))
        assert server.seen == []
        assert loader(tmp_path, "[::1]", private=True).load(f"{server.url}/img.png").shape == (6, 8, 3)
    finally:
        server.shutdown()


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/x.png",
                                 "http://10.1.2.3/x.png", "http://[::1]:80/x.png", "http://0.0.0.0/x.png",
                                 "http://[::ffff:127.0.0.1]/x.png", "http://224.0.0.1/x.png",
                                 "http://100.64.0.1/x.png", "http://192.168.1.1:8080/x.png"])
def test_private_and_metadata_addresses_are_refused_without_connecting(tmp_path, monkeypatch, url):
    no_connect(monkeypatch)
    refused(lambda: loader(tmp_path, "*").load(url))


def test_names_are_checked_after_resolution_and_the_checked_address_is_used(tmp_path, monkeypatch, other):
    answers = {"media.test": "127.0.0.1", "metadata.test": "169.254.169.254", "mixed.test": ["127.0.0.1", "10.0.0.8"]}
    calls = []

    def resolver(host, port_, family=0, kind=0, *rest):
        calls.append(host)
        found = answers[host] if isinstance(answers[host], list) else [answers[host]]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port_)) for a in found]

    strict = loader(tmp_path, "*", resolver=resolver)
    with monkeypatch.context() as patched:
        no_connect(patched)
        refused(lambda: strict.load("http://metadata.test/latest/meta-data/"))
        refused(lambda: strict.load(f"http://media.test:{port(other)}/img.png"))  # resolves to loopback
    # allowed private addresses: the name is resolved once, by us, and that address is connected to
    calls.clear()
    relaxed = loader(tmp_path, "media.test", private=True, resolver=resolver)
    assert relaxed.load(f"http://media.test:{port(other)}/img.png").shape == (6, 8, 3)
    assert calls == ["media.test"]
    assert other.seen[-1]["host"] == f"media.test:{port(other)}"  # the Host header names the host
    # one refused address of a name refuses the name
    with monkeypatch.context() as patched:
        no_connect(patched)
        refused(lambda: loader(tmp_path, "mixed.test", resolver=resolver).load("http://mixed.test/x.png"))


def test_address_rules():
    for address in ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254", "169.254.1.1",
                    "0.0.0.0", "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::",
                    "fe80::1", "fc00::1", "fd00:ec2::254", "::ffff:10.0.0.1", "2002:7f00:1::1", "64:ff9b::a00:1",
                    "168.63.129.16", "100.100.100.200"]:
        assert address_refusal(address), address
    for address in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"]:
        assert address_refusal(address) is None, address


def test_allow_list_parsing():
    policy = MediaPolicy.build(" Images.Example.org , cdn.example.com:8443, [2001:db8::1]:80 ")
    assert policy.allow_hosts == (HostRule("images.example.org"), HostRule("cdn.example.com", 8443),
                                  HostRule("2001:db8::1", 80))
    assert not policy.allow_any_host and MediaPolicy.build("a.example, *").allow_any_host
    with pytest.raises(ValueError, match="SEGAGENT_MEDIA_ALLOW_HOSTS"):
        MediaPolicy.build("http://x.example/path")


def test_policy_from_settings(make_settings, tmp_path):
    settings = make_settings(SEGAGENT_MEDIA_ALLOW_HOSTS="a.example:81", SEGAGENT_MEDIA_ALLOW_PRIVATE="false",
                             SEGAGENT_MEDIA_MAX_MB="3", LOCAL_FILES_DOCUMENT_ROOT=str(tmp_path),
                             SEGAGENT_TRUST_SETUP="true")
    policy = MediaPolicy.from_settings(settings)
    assert policy.allow_hosts == (HostRule("a.example", 81),) and not policy.allow_private
    assert policy.max_bytes == 3 * 2**20 and policy.local_files_root == tmp_path and policy.trust_setup


# --- redirects, deadline, size, content type, neutral errors ------------------------------------------

def test_a_redirect_to_a_refused_host_is_not_followed(tmp_path, ls, other):
    media = loader(tmp_path, f"127.0.0.1:{port(other)}", private=True)
    url = f"{other.url}/redirect?to={ls.url}/img.png"
    with pytest.raises(MediaError) as err:
        media.load(url)
    assert err.value.status == 502 and err.value.message == f"image URL {url!r} could not be fetched"
    assert ls.seen == []
    # a redirect within allowed hosts is followed
    assert media.load(f"{other.url}/redirect?to=/img.png").shape == (6, 8, 3)


def test_the_deadline_covers_a_trickling_body(tmp_path, other):
    media = loader(tmp_path, "127.0.0.1", private=True, timeout=2)
    start = time.monotonic()
    with pytest.raises(MediaError, match="could not be fetched"):
        media.load(f"{other.url}/trickle")
    assert time.monotonic() - start < 3.5
    assert cached(tmp_path) == []  # no half file


def test_the_deadline_covers_a_server_that_never_answers(tmp_path, other):
    start = time.monotonic()
    with pytest.raises(MediaError, match="could not be fetched"):
        loader(tmp_path, "127.0.0.1", private=True, timeout=1).load(f"{other.url}/hang")
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("path", ["/big", "/big-unsized"])
def test_the_byte_cap(tmp_path, other, path):
    media = loader(tmp_path, "127.0.0.1", private=True, max_bytes=2**20)
    with pytest.raises(MediaError, match="SEGAGENT_MEDIA_MAX_MB=1") as err:
        media.load(f"{other.url}{path}")
    assert err.value.status == 413
    assert cached(tmp_path) == []


def test_content_type(tmp_path, other):
    media = loader(tmp_path, "127.0.0.1", private=True)
    with pytest.raises(MediaError, match="not image") as err:
        media.load(f"{other.url}/page")
    assert err.value.status == 422 and SECRET not in err.value.message and "html" not in err.value.message
    assert media.load(f"{other.url}/octet").shape == (6, 8, 3)
    assert media.load(f"{other.url}/untyped").shape == (6, 8, 3)
    assert len(cached(tmp_path)) == 2  # only whole files, nothing for the page


def test_errors_from_other_hosts_never_say_what_the_network_said(tmp_path, other):
    media = loader(tmp_path, "127.0.0.1", private=True, timeout=1)
    urls = [f"{other.url}/missing.png", f"http://127.0.0.1:{closed_port()}/x.png", f"{other.url}/hang"]
    messages = set()
    for url in urls:
        with pytest.raises(MediaError) as err:
            media.load(url)
        assert err.value.status == 502
        message = err.value.message.replace(url, "<url>")
        for word in ("404", "Not Found", SECRET, "refused", "timed out", "Timeout", "Connection", "unreachable"):
            assert word not in message, message
        messages.add(message)
    assert messages == {"image URL '<url>' could not be fetched"}


# --- Label Studio: its host, its token, task ids, /setup ----------------------------------------------

def test_the_token_goes_only_to_label_studios_media_paths(tmp_path, ls, other):
    media = loader(tmp_path, f"127.0.0.1:{port(other)}", private=True, ls_url=ls.url)
    ls.redirect_to = f"{other.url}/img.png"  # the presigned storage URL
    assert tuple(media.load("/data/upload/3/up.png", 5)[0, 0]) == (1, 2, 3)
    assert media.load("s3://bucket/a b.png", 5).shape == (6, 8, 3)  # presigned, then redirected
    # Label Studio's host, not a media path: fetched, without the key (its API is not task media)
    assert media.load(f"{ls.url}/api/img.png").shape == (6, 8, 3)
    assert media.load(f"{ls.url}/img.png").shape == (6, 8, 3)
    auth = {r["path"].split("?")[0]: r["auth"] for r in ls.seen}
    assert auth == {"/data/upload/3/up.png": f"Token {TOKEN}", "/tasks/5/presign/": f"Token {TOKEN}",
                    "/api/img.png": None, "/img.png": None}
    assert parse_qs(urlsplit(ls.seen[1]["path"]).query)["fileuri"] == ["s3://bucket/a b.png"]
    # the storage (another origin, reached through Label Studio's redirect) never sees the token,
    # and neither does an allowed host, nor Label Studio when another host redirects there
    with pytest.raises(MediaError):
        media.load(f"{other.url}/redirect?to={ls.url}/data/upload/3/up.png")
    assert media.load(f"{other.url}/img.png").shape == (6, 8, 3)
    assert ls.seen[-1] == {"path": "/data/upload/3/up.png", "auth": None, "host": ls.url[len("http://"):]}
    assert [r["auth"] for r in other.seen] == [None, None, None]


def test_label_studio_redirects_are_followed_but_its_token_stays_home(tmp_path, ls, other):
    media = loader(tmp_path, ls_url=ls.url, private=True)  # `other` is not in the allow list
    ls.redirect_to = f"{other.url}/img.png"
    assert media.load("/data/upload/9/redirected.png").shape == (6, 8, 3)
    assert other.seen == [{"path": "/img.png", "auth": None, "host": other.url[len("http://"):]}]


def test_label_studio_errors_keep_their_status_and_hint(tmp_path, ls):
    # the strict default policy: Label Studio's host is reached although it is on loopback
    media = MediaLoader(tmp_path / "c", 1_000_000, 5, MediaSource(ls.url, "wrong"), MediaPolicy())
    with pytest.raises(MediaError, match=r"HTTP 401 \(check LABEL_STUDIO_API_KEY\)") as err:
        media.load("/data/upload/3/up.png")
    assert err.value.status == 502


@pytest.mark.parametrize("task_id", ["../x", "5/../../api", 0, -3, True, 1.5, "abc"])
def test_a_bad_task_id_is_refused_before_any_request(tmp_path, ls, task_id):
    with pytest.raises(MediaError, match="task id") as err:
        loader(tmp_path, ls_url=ls.url).load("s3://bucket/x.png", task_id)
    assert err.value.status == 422 and repr(task_id) in err.value.message
    assert ls.seen == []


def test_label_studio_files_need_a_known_label_studio(tmp_path, ls):
    media = loader(tmp_path)
    for url in ["/data/upload/3/up.png", "/data/local-files/?d=x.png"]:
        with pytest.raises(MediaError, match="LABEL_STUDIO_URL") as err:
            media.load(url, 5, MediaSource(ls.url, TOKEN))  # what /setup said: not trusted
        assert "SEGAGENT_TRUST_SETUP" in err.value.message and err.value.status == 422
    assert ls.seen == []
    trusting = loader(tmp_path, trust_setup=True)
    assert trusting.load("/data/upload/3/up.png", 5, MediaSource(ls.url, TOKEN)).shape == (6, 8, 3)
    # a configured Label Studio always wins over a per-request one
    configured = loader(tmp_path, ls_url=ls.url, trust_setup=True)
    assert configured.trusted_source(MediaSource("http://elsewhere.invalid", "x")).hostname == ls.url


def test_setup_cannot_repoint_media_unless_trusted():
    default = MediaSource(None, "settings-key")
    sources = ProjectSources(default)
    sources.remember("3.17", "http://attacker.example", "stolen")
    assert sources.heard_of("3") is None and sources.source_for("3") is default
    trusting = ProjectSources(default, trust_setup=True)
    trusting.remember("3.17", "http://ls.example:8080", "abc")
    assert trusting.source_for("3") == MediaSource("http://ls.example:8080", "abc")
    pinned = ProjectSources(MediaSource("http://ls.example", "key"), pinned=True, trust_setup=True)
    pinned.remember("3", "http://attacker.example", "stolen")
    assert pinned.source_for("3") == MediaSource("http://ls.example", "key")


def test_setup_route_honours_trust(make_settings):
    from segagent_backend.app import create_app

    from tests.service.payloads import CONFIG

    app = create_app(make_settings())  # SEGAGENT_TRUST_SETUP defaults to off
    app.test_client().post("/setup", json={"project": "3", "schema": CONFIG, "hostname": "http://attacker.example",
                                           "access_token": "abc"})
    assert app.config["SEGAGENT_SOURCES"].source_for("3").hostname is None


def test_token_paths():
    ls = LabelStudioHost.parse("https://ls.example/prefix/")
    assert ls.token_allowed("https://ls.example/prefix/data/upload/3/a.png")
    assert ls.token_allowed("https://ls.example:443/prefix/data/local-files/?d=a.png")
    assert ls.token_allowed("https://ls.example/prefix/tasks/12/presign/?fileuri=s3://b/a")
    for url in ["https://ls.example/prefix/api/projects/", "https://ls.example/prefix/api/projects/3/export",
                "https://ls.example/prefix/api/tasks/5/","https://ls.example/data/upload/3/a.png", "https://ls.example/prefix/tasks/x/presign/",
                "https://ls.example/prefix/data/upload/../../admin", "https://ls.example/prefix/img.png",
                "http://ls.example/prefix/data/upload/3/a.png", "https://ls.example:8443/prefix/api/x",
                "https://other.example/prefix/api/x"]:
        assert not ls.token_allowed(url), url


# --- local files --------------------------------------------------------------------------------------

def test_local_files_are_read_inside_the_root_only(tmp_path, ls):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (4, 3), (9, 9, 9)).save(root / "sub" / "in side.png")
    Image.new("RGB", (4, 3)).save(outside / "secret.png")
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "link").symlink_to(outside)
    media = loader(tmp_path, local_files_root=root)  # no Label Studio needed for files that are there
    assert tuple(media.load("/data/local-files/?d=sub/in%20side.png")[0, 0]) == (9, 9, 9)
    assert tuple(media.load("/data/local-files/?d=sub/../sub/in+side.png")[0, 0]) == (9, 9, 9)
    for d in ["escape.png", "link/secret.png", "../outside/secret.png", str(outside / "secret.png"),
              "sub/../../outside/secret.png"]:
        with pytest.raises(MediaError, match="outside LOCAL_FILES_DOCUMENT_ROOT") as err:
            media.load(f"/data/local-files/?d={d}")
        assert err.value.status == 422
    # a file that is not under the root is fetched from Label Studio, with its token
    remote = loader(tmp_path, ls_url=ls.url, local_files_root=root)
    assert remote.load("/data/local-files/?d=elsewhere/x.png").shape == (6, 8, 3)
    assert ls.seen == [{"path": "/data/local-files/?d=elsewhere/x.png", "auth": f"Token {TOKEN}",
                        "host": ls.url[len("http://"):]}]


def test_label_studio_paths_with_dot_segments_are_refused(tmp_path, ls):
    media = loader(tmp_path, ls_url=ls.url)
    for url in ["/data/upload/../../api/projects/", "/data/upload/3/%2e%2e/%2E%2E/x.png", "upload/../x.png"]:
        with pytest.raises(MediaError, match="'..'") as err:
            media.load(url, 5)
        assert err.value.status == 422
    assert ls.seen == []


def test_without_a_root_local_files_come_from_label_studio(tmp_path, ls):
    assert loader(tmp_path, ls_url=ls.url).load("/data/local-files/?d=x.png").shape == (6, 8, 3)
    assert len(ls.seen) == 1


def test_downloads_are_cached_whole(tmp_path, other):
    media = loader(tmp_path, "127.0.0.1", private=True)
    media.load(f"{other.url}/img.png")
    media.load(f"{other.url}/img.png")
    assert other.paths() == ["/img.png"]
    files = cached(tmp_path)
    assert len(files) == 1 and files[0].suffix == ".png" and not files[0].name.startswith(".")
    # a cached URL is still subject to the host rules
    refused(lambda: loader(tmp_path).load(f"{other.url}/img.png"))


def test_unsupported_urls(tmp_path):
    media = loader(tmp_path, "*")
    for url in ["file:///etc/passwd", "ftp://x.example/a.png", "relative.png", "/etc/passwd",
                "http://user:pw@x.example/a.png"]:
        with pytest.raises(MediaError) as err:
            media.load(url)
        assert err.value.status == 422, url
    assert Path("/etc/passwd").exists()  # (nothing was read: the errors are 422s before any I/O)
