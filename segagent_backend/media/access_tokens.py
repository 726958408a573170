"""Label Studio API keys as an Authorization header: legacy tokens as they are, personal access tokens
exchanged for short-lived access tokens.

Label Studio 1.23 issues personal access tokens (PATs) by default. A PAT is a JWT *refresh* token: sent as
``Bearer <PAT>`` it gets 401. ``POST <Label Studio>/api/token/refresh/`` with ``{"refresh": <PAT>}``
answers ``{"access": ...}``, good as ``Bearer <access>`` until its ``exp`` (5 minutes). A legacy token
goes as ``Token <token>``.

``credentials(base_url, api_key)`` is this process's one ``Credentials`` for a Label Studio and key, so
every thread (media downloads, SDK clients) shares one access token: ``header()`` gives the header,
``rejected(header)`` forgets an access token Label Studio answered 401 to. The SDK's ``TokensClientExt``
tells the kinds of keys apart and makes the exchange. Tokens never go into logs or exception messages.
"""
from __future__ import annotations

import math
import os
import ssl
import threading
import time
from collections import OrderedDict
from typing import Optional

import httpx
import jwt

LEGACY, REFRESH, ACCESS, EXPIRED = "legacy", "refresh", "access", "expired"
# Exchange again this long before the access token's exp: a request may be in flight at exp, and the
# backend's clock may run a little behind Label Studio's.
MARGIN_S = 30.0
EXCHANGE_TIMEOUT_S = 10.0
_KEPT = 32  # Credentials kept per process (/setup may name several Label Studios when trusted)


class TokenExchangeFailed(Exception):
    """The exchange of a PAT for an access token failed. ``kind``: "rejected" (Label Studio answered
    ``status``), "timeout", "unreachable" or "bad-answer"; ``reason`` is for the log (no token in it)."""

    def __init__(self, kind: str, reason: str, status: Optional[int] = None):
        super().__init__(reason)
        self.kind, self.reason, self.status = kind, reason, status


def ca_bundle() -> str | bool:
    """The CA bundle an operator gives requests (a private CA of their Label Studio), else the default:
    token exchanges and media downloads go out with trust_env off, so they read it themselves."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _ssl_context(bundle: str | bool) -> ssl.SSLContext | bool:
    """httpx's verify for requests' CA bundle setting (a file or, as requests allows, a folder)."""
    if not isinstance(bundle, str):
        return bundle
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def key_kind(api_key: str) -> str:
    """LEGACY, REFRESH (a PAT), ACCESS or EXPIRED (a JWT past its exp, or without one)."""
    from label_studio_sdk.core.api_error import ApiError
    from label_studio_sdk.tokens.client_ext import TokensClientExt

    try:  # the SDK refuses an expired JWT key when the client is made
        tokens = TokensClientExt(base_url="", api_key=api_key)
    except ApiError:
        return EXPIRED
    kind = tokens.jwt_token_type(api_key)
    return kind if kind in (REFRESH, ACCESS) else LEGACY


def renew_at(access: str, now: Optional[float] = None) -> float:
    """When to exchange again (time.time()): MARGIN_S before the token's exp, or halfway there when it
    lives shorter; never for a token without a readable exp (it is kept until Label Studio refuses it)."""
    now = time.time() if now is None else now
    try:
        exp = float(jwt.decode(access, options={"verify_signature": False})["exp"])
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
        return math.inf
    return exp - min(MARGIN_S, max(0.0, exp - now) / 2)


class Credentials:
    """The Authorization header for one Label Studio (``base_url``) and one API key; thread-safe."""

    def __init__(self, base_url: str, api_key: str, timeout: float = EXCHANGE_TIMEOUT_S):
        # with the slash the SDK's urljoin keeps a base path (https://host/ls/api/token/refresh/)
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self.kind = key_kind(api_key)
        self._api_key = api_key
        self._exchanging = threading.Lock()  # one exchange at a time; the others wait for its token
        self._state = threading.Lock()  # guards _cached, never held while waiting on the network
        self._cached: Optional[tuple[str, float]] = None  # (access token, renew at): replaced whole

    def __repr__(self) -> str:
        return f"Credentials({self.base_url!r}, kind={self.kind!r})"

    def header(self, timeout: Optional[float] = None) -> str:
        """``Token <legacy>`` or ``Bearer <access>``; a PAT is exchanged when no fresh access token is
        cached (within ``timeout`` seconds, waiting included). Raises TokenExchangeFailed."""
        if self.kind == LEGACY:
            return "Token " + self._api_key
        if self.kind == ACCESS:  # an access token given as the key: used until it expires
            return "Bearer " + self._api_key
        if self.kind == EXPIRED:
            raise TokenExchangeFailed("rejected", "the API key is a JWT past its expiry", 401)
        return "Bearer " + self._access_token(timeout)

    def rejected(self, header: str) -> bool:
        """Label Studio answered 401 to ``header``: forget its access token. True when asking again with
        a new access token may help (the key is a PAT)."""
        if self.kind != REFRESH:
            return False
        with self._state:  # only that token: another thread may already have a new one
            if self._cached is not None and header == "Bearer " + self._cached[0]:
                self._cached = None
        return True

    def _fresh(self) -> Optional[str]:
        cached = self._cached
        return cached[0] if cached is not None and time.time() < cached[1] else None

    def _access_token(self, timeout: Optional[float]) -> str:
        token = self._fresh()
        if token is not None:
            return token
        started = time.monotonic()
        if not self._exchanging.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise TokenExchangeFailed("timeout", "waited past the deadline for another thread's token exchange")
        try:
            token = self._fresh()  # another thread may have exchanged while this one waited
            if token is None:
                left = None if timeout is None else timeout - (time.monotonic() - started)
                token = self._exchange(self.timeout if left is None else min(self.timeout, left))
                with self._state:
                    self._cached = (token, renew_at(token))
            return token
        finally:
            self._exchanging.release()

    def _exchange(self, timeout: float) -> str:
        """One POST to this Label Studio's /api/token/refresh/ (no proxy, no redirect): an access token.
        The SDK's TokensClientExt makes it, through a client that follows no redirect."""
        from label_studio_sdk.core.api_error import ApiError
        from label_studio_sdk.core.client_wrapper import SyncClientWrapper
        from label_studio_sdk.tokens.client_ext import TokensClientExt

        if timeout <= 0:
            raise TokenExchangeFailed("timeout", "no time left for the token exchange")
        verify = _ssl_context(ca_bundle())
        # trust_env off: the PAT goes straight to Label Studio, never to a proxy or with ~/.netrc credentials
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=verify) as client:
            wrapper = SyncClientWrapper(api_key=self._api_key, base_url=self.base_url, httpx_client=client)
            tokens = TokensClientExt(base_url=self.base_url, api_key=self._api_key, client_wrapper=wrapper)
            try:
                return tokens.refresh().access
            except ApiError as exc:  # its body is Label Studio's words: not logged, it may echo what it got
                raise TokenExchangeFailed("rejected", f"token exchange: HTTP {exc.status_code}",
                                          exc.status_code) from None
            except httpx.TimeoutException:
                raise TokenExchangeFailed("timeout", "token exchange timed out") from None
            except httpx.HTTPError as exc:
                raise TokenExchangeFailed("unreachable", f"token exchange: {type(exc).__name__}") from None
            except ValueError:  # not JSON (a redirect, a proxy's page) or no "access" in it
                raise TokenExchangeFailed("bad-answer", "token exchange: the answer has no access token") from None


_known: "OrderedDict[tuple[str, str], Credentials]" = OrderedDict()
_known_lock = threading.Lock()


def credentials(base_url: str, api_key: str) -> Credentials:
    """This process's Credentials for ``base_url`` and ``api_key`` (the last _KEPT used are kept)."""
    key = (base_url.rstrip("/") + "/", api_key)
    with _known_lock:
        found = _known.get(key)
        if found is None:
            found = _known[key] = Credentials(*key)
        _known.move_to_end(key)
        while len(_known) > _KEPT:
            _known.popitem(last=False)
        return found


class RenewingAuth(httpx.Auth):
    """httpx auth for SDK clients: a PAT's access token from ``Credentials`` (renewed MARGIN_S before its
    exp, shared with media downloads) and one retry after a 401. The SDK alone keeps its access token to
    the exact exp and never retries, so a request in flight at exp, or clocks a little apart, get 401."""

    requires_request_body = True  # the body is read first, so the retry can send it again

    def __init__(self, creds: Credentials):
        self.creds = creds

    def auth_flow(self, request: httpx.Request):
        # only requests the SDK authorized: its own token exchange carries no Authorization header
        if self.creds.kind != REFRESH or "Authorization" not in request.headers:
            yield request
            return
        header = self.creds.header()
        request.headers["Authorization"] = header
        response = yield request
        if response.status_code == 401 and self.creds.rejected(header):
            request.headers["Authorization"] = self.creds.header()
            yield request
