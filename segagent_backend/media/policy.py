"""Which task-image URLs may be fetched, from which addresses, and where the Label Studio token may go.

Rules (the operator's settings, see ``MediaPolicy.from_settings``):

- Label Studio's own host (``LABEL_STUDIO_URL``, or the host ``/setup`` named when
  ``SEGAGENT_TRUST_SETUP`` is on) is always allowed, whatever its address: the operator named it.
- Any other host must be in ``SEGAGENT_MEDIA_ALLOW_HOSTS`` (``host`` or ``host:port``; ``*`` = any
  host), and every address it resolves to must be public (not private, loopback, link-local,
  unspecified, multicast, reserved, shared/CGNAT or a cloud-metadata address) unless
  ``SEGAGENT_MEDIA_ALLOW_PRIVATE``. Addresses are checked after DNS resolution, at connect time.
- The token (``Authorization: Token ...``) goes only to Label Studio's media paths, never to its API:
  a task URL on ``/api/...`` is fetched without it (else anyone who may call /predict could read, and
  trigger, Label Studio's API as the key's owner).
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from ..settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port, family, type) -> [(family, type, proto, canonname, sockaddr)], as socket.getaddrinfo
Resolver = Callable[..., list]

# Cloud instance-metadata and host-agent addresses (AWS, GCP, Azure, Alibaba, Oracle, ECS task metadata).
METADATA_ADDRESSES: frozenset = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "fd00:ec2::254", "fd00:ec2::23",
    "100.100.100.200", "168.63.129.16", "192.0.0.192"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

ALLOW_HOSTS = "SEGAGENT_MEDIA_ALLOW_HOSTS"
ALLOW_PRIVATE = "SEGAGENT_MEDIA_ALLOW_PRIVATE"

# Label Studio paths (below its base path) that get the token: its media paths, nothing else (not /api/).
_TOKEN_PATHS = re.compile(
    r"^/(data/upload/|data/local-files/?$|storage-data/uploaded/?$|tasks/[1-9][0-9]*/presign/?$)")
DEFAULT_PORTS = {"http": 80, "https": 443}


class PolicyRefusal(Exception):
    """A URL or address the policy refuses; ``reason`` is for the server log only."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def address_refusal(address: str | IPAddress) -> Optional[str]:
    """Why ``address`` may not be fetched from without SEGAGENT_MEDIA_ALLOW_PRIVATE (None: it may)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    except ValueError:
        return "not an IP address"
    if ip in METADATA_ADDRESSES:
        return "a cloud-metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        for inner in embedded:
            if inner is not None and address_refusal(inner):
                return f"an IPv6 address embedding {address_refusal(inner)}"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved or non-global address"
    return None


@dataclass(frozen=True)
class HostRule:
    """One entry of SEGAGENT_MEDIA_ALLOW_HOSTS: a host name or IP literal, with a port or any port."""

    host: str
    port: Optional[int] = None

    @classmethod
    def parse(cls, text: str) -> "HostRule":
        """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (lower-cased, trailing dot dropped)."""
        text = text.strip()
        parts = urlsplit("//" + text)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{ALLOW_HOSTS}: {text!r} has a bad port") from None
        host = normalize_host(parts.hostname or "")
        if not host or parts.username or parts.path or parts.query:
            raise ValueError(f"{ALLOW_HOSTS}: {text!r} is not a host or host:port")
        return cls(host, port)

    def matches(self, host: str, port: int) -> bool:
        return self.host == host and (self.port is None or self.port == port)


def normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class Origin:
    """scheme, host and port of an http(s) URL (host lower-cased; the port made explicit)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> "Origin":
        """Raises PolicyRefusal for anything that is not an absolute http(s) URL with a host."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise PolicyRefusal(f"scheme {scheme or '(none)'!r} is not http or https")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise PolicyRefusal("the URL has a bad port") from None
        host = normalize_host(parts.hostname or "")
        if not host:
            raise PolicyRefusal("the URL has no host")
        if parts.username is not None or parts.password is not None:
            raise PolicyRefusal("the URL carries credentials")
        return cls(scheme, host, port)


@dataclass(frozen=True)
class LabelStudioHost:
    """The Label Studio the operator trusts: its origin and the base path it is served under."""

    url: str
    origin: Origin
    base_path: str  # "" or "/prefix" (no trailing slash)

    @classmethod
    def parse(cls, url: Optional[str]) -> Optional["LabelStudioHost"]:
        """None for None/"" (no Label Studio known); raises PolicyRefusal for a non-http(s) URL."""
        if not url:
            return None
        return cls(url.rstrip("/"), Origin.of(url), urlsplit(url).path.rstrip("/"))

    def join(self, path_and_query: str) -> str:
        """An absolute URL of this Label Studio for ``/path?query`` (below its base path)."""
        return self.url + "/" + path_and_query.lstrip("/")

    def owns(self, url: str) -> bool:
        """``url`` is on this Label Studio's origin."""
        try:
            return Origin.of(url) == self.origin
        except PolicyRefusal:
            return False

    def relative_path(self, url: str) -> Optional[str]:
        """The path of ``url`` below the base path ("/data/upload/.."), None when not below it."""
        path = urlsplit(url).path or "/"
        if self.base_path:
            if path != self.base_path and not path.startswith(self.base_path + "/"):
                return None
            path = path[len(self.base_path):] or "/"
        return path

    def token_allowed(self, url: str) -> bool:
        """Whether ``url`` is one of this Label Studio's media paths (the only ones the token goes to);
        paths with dot segments never qualify."""
        if not self.owns(url):
            return False
        path = self.relative_path(url)
        if path is None or any(seg in (".", "..") for seg in unquote(path).split("/")):
            return False
        return bool(_TOKEN_PATHS.match(path))


@dataclass(frozen=True)
class MediaPolicy:
    """What may be fetched. The defaults are the strict ones: only Label Studio's host.

    ``max_bytes``: largest download in bytes. ``local_files_root``: Label Studio's local-files document
    root when this process can read it (None: local files are fetched from Label Studio).
    ``trust_setup``: a per-request Label Studio host (what /setup said) is trusted when no host is
    configured. ``resolver``: ``socket.getaddrinfo`` (tests inject their own).
    """

    allow_hosts: tuple[HostRule, ...] = ()
    allow_any_host: bool = False
    allow_private: bool = False
    max_bytes: int = 64 * 2**20
    local_files_root: Optional[Path] = None
    trust_setup: bool = False
    resolver: Resolver = field(default=socket.getaddrinfo, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "MediaPolicy":
        root = settings.local_files_root
        return cls.build(settings.media_allow_hosts, allow_private=settings.media_allow_private,
                         max_bytes=settings.media_max_mb * 2**20, local_files_root=Path(root) if root else None,
                         trust_setup=settings.trust_setup)

    @classmethod
    def build(cls, allow_hosts: str = "", **kwargs) -> "MediaPolicy":
        """A policy from the comma-separated SEGAGENT_MEDIA_ALLOW_HOSTS text and the other fields."""
        entries = [e.strip() for e in (allow_hosts or "").split(",") if e.strip()]
        rules = tuple(HostRule.parse(e) for e in entries if e != "*")
        return cls(allow_hosts=rules, allow_any_host="*" in entries, **kwargs)

    def host_allowed(self, origin: Origin) -> bool:
        """The host-name rule alone (addresses are checked when connecting)."""
        return self.allow_any_host or any(rule.matches(origin.host, origin.port) for rule in self.allow_hosts)

    def check_addresses(self, origin: Origin, addresses: list[str], label_studio: Optional[LabelStudioHost]) -> None:
        """Raise PolicyRefusal unless every resolved address of ``origin`` may be connected to."""
        if self.allow_private or (label_studio is not None and label_studio.origin == origin):
            return
        for address in addresses:
            why = address_refusal(address)
            if why:
                raise PolicyRefusal(f"{origin.host} resolves to {address}, {why} ({ALLOW_PRIVATE} is off)")
