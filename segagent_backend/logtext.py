"""Caller-supplied text in log lines: one line, no control characters, no URL secrets.

A task's image URL, a Location header or an exception's message quoting one is written by whoever sent the
task: a newline in it would start a forged log line, an escape sequence would rewrite a terminal, and a
presigned URL's query is a credential. ``url`` and ``text`` make such values safe to log with ``%s``.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode, urlsplit

MAX_CHARS = 500  # of one logged value
_QUERY = re.compile(r"\?[^\s'\"()<>]*")


def text(value: object) -> str:
    """``value`` on one line: every non-printable character (newline, ESC, U+2028, ...) escaped, at most
    MAX_CHARS characters, and any ``?query`` of a URL it quotes cut."""
    return _escaped(_QUERY.sub("?...", str(value)))


def url(value: object) -> str:
    """A URL as logged: no ``user:password@``, no query or fragment (presigned signatures, ``?token=``),
    except a local-files path's ``d``, which names the file and nothing secret; escaped like ``text``."""
    raw = str(value)
    try:
        parts = urlsplit(raw)
    except ValueError:  # an unparseable netloc ("http://[")
        return _escaped(raw.split("?", 1)[0].split("#", 1)[0])
    netloc = parts.netloc.rpartition("@")[2]
    kept = ""
    if parts.path.rstrip("/").endswith("/data/local-files"):
        d = parse_qs(parts.query).get("d")
        kept = "?" + urlencode({"d": d[0]}) if d else ""
    head = f"{parts.scheme}://{netloc}" if parts.scheme or netloc else ""
    return _escaped(head + parts.path + (kept or ("?..." if parts.query else "")))


def _escaped(value: str) -> str:
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value)
    return out if len(out) <= MAX_CHARS else out[:MAX_CHARS] + "..."
