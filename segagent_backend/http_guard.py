"""What stands between a request and the routes: the body limit, a bounded JSON loader, validation against
the OpenAPI request schemas, request ids, and the error handlers (every error is JSON; a 500 says only
"internal error" and a request id, the details go to the log).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import re
import uuid
from collections import deque
from typing import Any, Optional

import numpy as np
from flask import Flask, g, jsonify, request
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import logtext
from .errors import ModelUnavailable, RequestError
from .openapi import request_schemas
from .settings import Settings

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 64  # Label Studio's deepest body (webhook -> annotation -> result -> value -> labels) is ~6
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string (escapes included), to skip its brackets
_CHUNK = 1 << 20
_TYPE_NAMES = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


def install(app: Flask, settings: Settings) -> None:
    """Body limit, request ids, schema validators and JSON error handlers on ``app``."""
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_mb * 1024 * 1024
    app.config["SEGAGENT_VALIDATORS"] = {path: Draft202012Validator(schema)
                                         for path, schema in request_schemas(settings).items()}

    @app.before_request
    def request_id():
        g.request_id = uuid.uuid4().hex[:16]

    @app.after_request
    def tag(response):
        if "request_id" in g:
            response.headers["X-Request-Id"] = g.request_id
        return response

    def reply(message: str, status: int, **extra: Any):
        body = {"error": message, **extra}
        if "request_id" in g:
            body["request_id"] = g.request_id
        return jsonify(body), status

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        return reply(exc.message, exc.status, **({"field": exc.field} if exc.field else {}))

    @app.errorhandler(ModelUnavailable)
    def model_unavailable(exc: ModelUnavailable):
        log.warning("model unavailable: %s", exc)
        return reply(_scrub(str(exc)), 503)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        return reply(f"the request body is larger than {settings.max_body_mb} MB (SEGAGENT_MAX_BODY_MB)", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return reply(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # the path is the caller's (percent-decoded: it may hold a newline): escaped onto one line
        log.exception("unhandled error on %s %s (request id %s)", logtext.text(request.method),
                      logtext.text(request.path), g.get("request_id"))
        return reply("internal error: the server log has the details under this request id", 500)


class FieldError(RequestError):
    """A request body that does not follow the OpenAPI schema; ``field`` is the path (``tasks[0].data``)."""

    def __init__(self, field: str, problem: str, status: int = 400):
        super().__init__(f"{field}: {problem}" if field else problem, status, field or None)


def json_body(route: str) -> dict:
    """The request's JSON object, loaded within bounds and checked against ``route``'s request schema."""
    if not request.is_json:
        raise RequestError("the request body must be JSON (Content-Type: application/json)")
    raw = request.get_data(cache=True)  # werkzeug stops at MAX_CONTENT_LENGTH (413)
    body = load_json(raw)
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    from flask import current_app

    validator = current_app.config["SEGAGENT_VALIDATORS"].get(route)
    if validator is not None:
        validate(validator, body)
    return body


def load_json(raw: bytes) -> Any:
    """JSON text -> value; RequestError for bad JSON, nesting deeper than MAX_JSON_DEPTH (checked before
    parsing), NaN/Infinity and numbers beyond float range."""
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(f"the request body nests {depth} levels deep; at most {MAX_JSON_DEPTH} are read")
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RequestError:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, an integer beyond 4300 digits
        raise RequestError("the request body is not valid JSON") from None


def json_depth(raw: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text, brackets inside strings not counted. Linear time,
    bounded memory (1 MB chunks), nothing parsed. Text with no more than MAX_JSON_DEPTH brackets in all
    (most bodies, brush RLEs included) answers 0 or 1 at once: its depth cannot exceed the limit."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0 if not (b"[" in raw or b"{" in raw) else 1
    text = _STRING.sub(b'""', raw)
    deepest, depth = 0, 0
    for start in range(0, len(text), _CHUNK):
        chunk = np.frombuffer(text, np.uint8, min(_CHUNK, len(text) - start), start)
        step = ((chunk == 91) | (chunk == 123)).astype(np.int32) - ((chunk == 93) | (chunk == 125))
        running = np.cumsum(step, dtype=np.int64) + depth
        if running.size:
            deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def validate(validator: Draft202012Validator, body: dict) -> None:
    """The most relevant of the first schema errors -> FieldError naming the field (400; 413 over a limit)."""
    error = best_match(itertools.islice(validator.iter_errors(body), 20))
    if error is None:
        return
    while error.context:  # a type union that failed inside: report the innermost relevant error
        inner = best_match(error.context)
        if inner is None:
            break
        error = inner
    field, problem, setting = _describe(error)
    if setting:
        raise FieldError(field, f"{problem} ({setting})", 413)
    raise FieldError(field, problem)


def field_path(parts: deque) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: ValidationError) -> tuple[str, str, Optional[str]]:
    """(field path, what is wrong, the setting of the limit) without echoing the value sent."""
    path = field_path(error.absolute_path)
    kind, expected, value = error.validator, error.validator_value, error.instance
    setting = error.schema.get("x-setting") if isinstance(error.schema, dict) else None
    if kind == "required":
        missing = next((p for p in expected if isinstance(value, dict) and p not in value), "?")
        return (f"{path}.{missing}" if path else missing), "is required", None
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        return path, "must be " + " or ".join(_TYPE_NAMES.get(t, t) for t in types), None
    if kind == "maxItems":
        return path, f"has {len(value)} items; at most {expected} are accepted", setting
    if kind == "minItems":
        return path, "must not be empty" if expected == 1 else f"needs at least {expected} items", None
    if kind == "maxLength":
        return path, f"has {len(value)} characters; at most {expected} are accepted", setting
    if kind == "minLength":
        return path, "must not be empty", None
    if kind in ("minimum", "maximum"):
        return path, f"must be {'at least' if kind == 'minimum' else 'at most'} {expected}", None
    if kind == "pattern":
        return path, f"has an unexpected format (expected {expected})", None
    return path, f"is not valid ({kind})", None


def _no_constant(name: str):
    raise RequestError(f"the request body holds {name}, which is not JSON (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError("the request body holds a number beyond float range (numbers must be finite)")
    return value


_PATH = re.compile(r"(?<![\w:/.])/(?:[\w.\-]+/)+[\w.\-]*")


def _scrub(message: str) -> str:
    """A message whose absolute file paths keep only their last part (``.../broken-policy``): enough for the
    operator to recognise, nothing about how the server is laid out."""
    return _PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], message)
