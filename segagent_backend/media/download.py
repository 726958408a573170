"""A streamed http(s) download under the media policy: checked addresses, one deadline, a byte cap.

``download(request, policy, dest_dir, name)`` fetches ``request.url`` into ``dest_dir/name`` (atomically: a
temporary file renamed into place, never a half file) and returns the path. Every connection resolves
the host itself (``policy.resolver``), checks every address against the policy and connects to a
checked address, so DNS rebinding cannot swap it; redirects are followed here (at most
``MAX_REDIRECTS``), each hop checked like the first. A watchdog shuts the sockets down when the
deadline passes, so neither a slow server nor a 1 byte/s trickle holds a thread past it.

Failures raise ``FetchFailed`` (what went wrong, for the log; ``status`` when the server answered)
or ``PolicyRefusal``; the loader turns them into what the caller sees.
"""
from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .. import logtext
from .access_tokens import Credentials, TokenExchangeFailed, ca_bundle, credentials
from .policy import LabelStudioHost, MediaPolicy, Origin, PolicyRefusal

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
CHUNK = 64 * 1024
# Content types accepted before storing (None: the header is missing). S3 defaults to binary/octet-stream.
BINARY_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchFailed(Exception):
    """The download failed. ``reason``: for the server log; ``status``: the HTTP status when the
    server answered with an error; ``kind``: "http", "unreachable", "timeout", "too-large",
    "not-an-image", "refused" (a redirect the policy refuses) or "redirects"; ``label_studio``: the
    failing hop was Label Studio's own host (the operator's server: its answer may be shown); ``words``:
    what happened to the connection in our words ("the connection was reset"), never an exception's text,
    for a reply."""

    def __init__(self, kind: str, reason: str, status: Optional[int] = None, label_studio: bool = False,
                 words: str = "the connection failed"):
        super().__init__(reason)
        self.kind, self.reason, self.status, self.label_studio = kind, reason, status, label_studio
        self.words = words


@dataclass(frozen=True)
class Request:
    """One download: ``url`` (absolute http(s)), the trusted Label Studio (None: none known), its
    ``token`` (sent only to Label Studio's media paths, and only while every hop so far stayed on
    Label Studio's origin; a personal access token is first exchanged there for an access token),
    ``deadline``: the ``time.monotonic()`` value by which the whole download
    must be done, ``max_bytes``: the largest body accepted."""

    url: str
    label_studio: Optional[LabelStudioHost]
    token: Optional[str] = field(repr=False)  # never in logs or reprs
    deadline: float
    max_bytes: int


class _Guard:
    """Connects sockets for one download under the policy, and shuts them down at the deadline."""

    def __init__(self, policy: MediaPolicy, label_studio: Optional[LabelStudioHost], deadline: float):
        self.policy, self.label_studio, self.deadline = policy, label_studio, deadline
        self.expired = False
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def connect(self, scheme: str, host: str, port: int, timeout: Optional[float],
                source_address=None, socket_options=None) -> socket.socket:
        """A socket connected to a checked address of ``host`` (raises PolicyRefusal or OSError)."""
        origin = Origin(scheme, host.strip("[]").lower().rstrip("."), port)
        if self.remaining() <= 0:
            raise socket.timeout("deadline passed before connecting")
        infos = self.policy.resolver(origin.host, port, 0, socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{origin.host} resolves to no address")
        self.policy.check_addresses(origin, [info[4][0] for info in infos], self.label_studio)
        error: Optional[OSError] = None
        for family, kind, proto, _, sockaddr in infos:
            budget = self.remaining() if timeout is None else min(timeout, self.remaining())
            if budget <= 0:
                raise socket.timeout("deadline passed while connecting")
            sock = socket.socket(family, kind, proto)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if source_address:
                    sock.bind(source_address)
                sock.settimeout(budget)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self._watch(sock)
            return sock
        raise error or OSError(f"could not connect to {origin.host}")

    def _watch(self, sock: socket.socket) -> None:
        """Keep a duplicate of ``sock`` (its own file descriptor of the same connection): shutting the
        duplicate down wakes a read blocked on the original, also after TLS has wrapped it."""
        with self._lock:
            self._watched.append(sock.dup())
            if self.expired:
                self._shutdown_all()

    def expire(self) -> None:
        """The watchdog: the deadline passed, stop every read of this download."""
        with self._lock:
            self.expired = True
            self._shutdown_all()

    def _shutdown_all(self) -> None:
        for sock in self._watched:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            for sock in self._watched:
                sock.close()
            self._watched.clear()


def _guarded_session(guard: _Guard) -> requests.Session:
    """A requests session whose every connection goes through ``guard`` (no proxies, no netrc)."""

    def new_conn(conn, scheme: str) -> socket.socket:
        timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else None
        return guard.connect(scheme, conn._dns_host, conn.port, timeout, conn.source_address, conn.socket_options)

    class Connection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self, "http")

    class SecureConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self, "https")

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = SecureConnection

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": SecurePool}

    session = requests.Session()
    session.trust_env = False  # no proxy (it would resolve names itself), no ~/.netrc credentials
    session.verify = ca_bundle()  # ... but the CA bundle an operator gives requests still counts
    session.mount("http://", Adapter())
    session.mount("https://", Adapter())
    return session


def download(request: Request, policy: MediaPolicy, dest_dir: Path, name: str) -> Path:
    """Fetch ``request`` into ``dest_dir/name`` (replaced atomically) and return that path."""
    guard = _Guard(policy, request.label_studio, request.deadline)
    watchdog = threading.Timer(max(0.0, guard.remaining()), guard.expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        with _guarded_session(guard) as session:
            return _follow(session, guard, request, policy, Path(dest_dir), name)
    finally:
        watchdog.cancel()
        guard.close()


def _follow(session: requests.Session, guard: _Guard, request: Request, policy: MediaPolicy,
            dest_dir: Path, name: str) -> Path:
    ls = request.label_studio
    url, on_label_studio = request.url, ls is not None and ls.owns(request.url)
    vouched = on_label_studio  # Label Studio's own host, or a redirect Label Studio gave
    for hop in range(MAX_REDIRECTS + 1):
        origin = Origin.of(url) if hop == 0 else _redirect_origin(url)
        is_ls = ls is not None and ls.origin == origin
        on_label_studio = on_label_studio and is_ls
        if not (is_ls or vouched or policy.host_allowed(origin)):
            refusal = f"{origin.host}:{origin.port} is not Label Studio's host and not allowed"
            if hop:  # what a server redirected to is the network's word: a plain failure to the caller
                raise FetchFailed("refused", f"redirect refused: {refusal}", label_studio=False)
            raise PolicyRefusal(refusal)
        headers = {"User-Agent": "segagent-backend", "Accept": "image/*, */*;q=0.5", "Accept-Encoding": "identity"}
        creds: Optional[Credentials] = None
        if request.token and on_label_studio and ls.token_allowed(url):
            creds = credentials(ls.url, request.token)
            headers["Authorization"] = _authorization(creds, guard)
        response = _get(session, guard, url, headers, is_ls, hop)
        if creds is not None and response.status_code == 401 and creds.rejected(headers["Authorization"]):
            # a PAT's access token Label Studio no longer takes (revoked, or clocks apart): once more, a new one
            response.close()
            headers["Authorization"] = _authorization(creds, guard)
            response = _get(session, guard, url, headers, is_ls, hop)
        try:
            return _answer(response, guard, request, dest_dir, name)
        except _Redirect as redirect:
            vouched = is_ls  # Label Studio's redirect (a presigned storage URL) is vouched for; no one else's
            url = redirect.url
        except FetchFailed as exc:
            exc.label_studio = is_ls
            raise
    raise FetchFailed("redirects", f"more than {MAX_REDIRECTS} redirects", label_studio=False)


def _authorization(creds: Credentials, guard: _Guard) -> str:
    """The Authorization header for Label Studio, a PAT exchanged within the download's deadline."""
    try:
        return creds.header(timeout=guard.remaining())
    except TokenExchangeFailed as exc:
        kind = {"rejected": "http", "timeout": "timeout"}.get(exc.kind, "unreachable")
        words = "its answer to the token exchange held no access token" if exc.kind == "bad-answer" \
            else "the token exchange failed"
        raise FetchFailed(kind, exc.reason, exc.status, label_studio=True, words=words) from None


def _get(session: requests.Session, guard: _Guard, url: str, headers: dict, is_ls: bool,
         hop: int) -> requests.Response:
    """One streamed GET (no redirects followed); network failures as FetchFailed, refusals as PolicyRefusal."""
    remaining = guard.remaining()
    if remaining <= 0:
        raise FetchFailed("timeout", "the deadline passed", label_studio=is_ls)
    try:
        try:
            return session.get(url, headers=headers, stream=True, allow_redirects=False,
                               timeout=(remaining, remaining))
        except requests.RequestException as exc:
            raise _network_failure(guard, exc, is_ls) from None
    except PolicyRefusal as exc:  # an address of the host is refused
        if hop:
            raise FetchFailed("refused", f"redirect refused: {exc.reason}", label_studio=False) from None
        raise


class _Redirect(Exception):
    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


def _redirect_origin(url: str) -> Origin:
    try:
        return Origin.of(url)
    except PolicyRefusal as exc:
        raise FetchFailed("refused", f"redirect refused: {exc.reason}", label_studio=False) from None


def _answer(response: requests.Response, guard: "_Guard", request: Request, dest_dir: Path, name: str) -> Path:
    """Store a 200 answer; raise _Redirect for a redirect, FetchFailed for anything else."""
    url = response.url
    with response:
        if response.status_code in _REDIRECTS and response.headers.get("Location"):
            target = urljoin(url, response.headers["Location"])
            log.info("media download redirected (%d) to %s", response.status_code, logtext.url(target))
            raise _Redirect(target)
        if response.status_code >= 400:
            raise FetchFailed("http", f"HTTP {response.status_code}", response.status_code)
        if response.status_code != 200:
            raise FetchFailed("http", f"unexpected HTTP {response.status_code}", response.status_code)
        _check_headers(response, request.max_bytes)
        return _store(response, guard, request.max_bytes, dest_dir, name)


def _check_headers(response: requests.Response, max_bytes: int) -> None:
    kind = (response.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if kind and not (kind.startswith("image/") or kind in BINARY_TYPES):
        raise FetchFailed("not-an-image", f"Content-Type {kind!r} is not an image")
    length = response.headers.get("Content-Length")
    if length and length.strip().isdigit() and int(length) > max_bytes:
        raise FetchFailed("too-large", f"Content-Length {length} is above {max_bytes} bytes")


def _store(response: requests.Response, guard: _Guard, max_bytes: int, dest_dir: Path, name: str) -> Path:
    """Stream the body into a temporary file beside ``dest_dir/name``, then rename it into place."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".part-")
    try:
        size = 0
        with os.fdopen(fd, "wb") as out:
            raw = response.raw
            while True:
                remaining = guard.remaining()
                if remaining <= 0 or guard.expired:
                    raise FetchFailed("timeout", f"the deadline passed after {size} bytes")
                _set_read_timeout(raw, remaining)
                try:
                    chunk = raw.read(CHUNK, decode_content=False)
                except Exception as exc:  # urllib3 errors, OSError of a socket the watchdog shut down
                    failure = _network_failure(guard, exc)
                    if not isinstance(failure, FetchFailed):  # (a refusal cannot happen mid-body)
                        failure = FetchFailed("unreachable", str(exc))
                    raise failure from None
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise FetchFailed("too-large", f"the body is above {max_bytes} bytes")
                out.write(chunk)
        if guard.expired:
            raise FetchFailed("timeout", f"the deadline passed after {size} bytes")
        path = dest_dir / name
        os.replace(tmp, path)
        return path
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _set_read_timeout(raw, seconds: float) -> None:
    """Let no single read outlast the deadline (the watchdog is the backstop)."""
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(seconds, 0.001))
        except OSError:
            pass


def _network_failure(guard: _Guard, exc: BaseException, label_studio: bool = False) -> Exception:
    """What a requests/urllib3 error means: our own PolicyRefusal (when wrapped), a timeout or else
    an unreachable host."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:  # in case urllib3/requests wrapped our refusal
        if isinstance(cause, PolicyRefusal):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    reason = f"{type(exc).__name__}: {exc}"  # for the log only (logtext.text cuts the URL's query there)
    if guard.expired or guard.remaining() <= 0:  # the watchdog's shutdown can look like a reset: check first
        return FetchFailed("timeout", f"the deadline passed: {reason}", label_studio=label_studio,
                           words="no answer in time")
    words = connection_words(exc)
    if words is None and isinstance(exc, (requests.Timeout, socket.timeout)):
        return FetchFailed("timeout", f"timed out: {reason}", label_studio=label_studio, words="no answer in time")
    return FetchFailed("unreachable", reason, label_studio=label_studio, words=words or "the connection failed")


# what an error found in an exception's chain says happened, in our words (first match wins)
_CONNECTION_WORDS: tuple[tuple[type, str], ...] = (
    (ConnectionRefusedError, "the connection was refused"),
    (ConnectionResetError, "the connection was reset"),
    (ConnectionAbortedError, "the connection was aborted"),
    (http.client.RemoteDisconnected, "the connection closed without an answer"),
    (http.client.IncompleteRead, "the connection closed before the answer was complete"),
    (BrokenPipeError, "the connection closed"),
    (socket.gaierror, "the host name does not resolve"),
    (ssl.SSLError, "the TLS handshake failed"),
)


def connection_words(exc: BaseException) -> Optional[str]:
    """What happened to the connection, read from ``exc``'s chain (requests and urllib3 wrap the socket's
    error, sometimes only in their args); None when nothing there says."""
    seen: set[int] = set()
    todo: list = [exc]
    while todo:
        cause = todo.pop(0)
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        seen.add(id(cause))
        for kind, words in _CONNECTION_WORDS:
            if isinstance(cause, kind):
                return words
        todo += [cause.__cause__, cause.__context__, getattr(cause, "reason", None), *cause.args]
    return None
