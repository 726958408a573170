"""Every 4xx/5xx the service answers, where people look for it: one log line with its reason, task id(s) and
request id, and a small per-process tally for /health.

Label Studio shows an annotator none of a click's error (its screen gets ``errors: ["422 Client Error ..."]``
without our reason) and gunicorn's access line has no reason either, so the reason must be in OUR log:

    POST /predict 422 request_id=3f2a9c0d1e2b4a5c task_id=7: the mask is empty (nothing was segmented): ...

Both whole-request errors (the JSON ``{"error": ...}`` replies) and per-task errors inside a /predict reply
(``{"error", "status"}`` entries, embedded or queue mode: the web process reads both) are reported.
4xx log at WARNING, 5xx at ERROR. The request id is the caller's ``X-Request-ID`` (Label Studio's or a
proxy's) when it is a plain token, else a new one; every reply carries it back in ``X-Request-ID``.

Reasons are our own messages, but some name a task's URL: query strings (presigned signatures, ``?token=``)
and ``user:password@`` are cut, and the configured secrets (``LABEL_STUDIO_API_KEY``, Basic auth) are masked
before anything is logged or kept. Headers are never logged.
"""
from __future__ import annotations

import contextvars
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Optional

from .labelstudio.tasks import task_id
from .prometheus import method_label  # GET, POST or "other": a caller cannot write what it likes into the log

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
ENVIRON_KEY = "segagent.request_id"
WINDOW_S = 15 * 60  # /health counts the errors of the last 15 minutes ...
BUCKET_S = 60  # ... in per-minute buckets: at most 16 small Counters per process, whatever the error rate
MAX_TASK_LINES = 20  # per-task lines logged per request; a 1000-task pre-annotation must not log 1000 lines
MAX_REASON = 500  # characters of a reason kept (log and /health)
MAX_TASK_IDS = 10  # task ids named on one whole-request line
QUIET_ROUTES = frozenset({"/", "/health", "/metrics"})  # polled every few seconds; their body says why already

_ACCEPTED_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")  # a caller's id is logged: nothing that could forge a line
_URL_QUERY = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s'\"?#]*)[?#][^\s'\"]*", re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.\-]*://)[^\s/'\"@]+@", re.IGNORECASE)
_MIN_SECRET = 4  # shorter "secrets" would mask ordinary letters of every reason

_current_id: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("segagent_request_id", default=None)


# ----- request ids ---------------------------------------------------------------------------------------
def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def accepted_request_id(value: Optional[str]) -> Optional[str]:
    """The caller's ``X-Request-ID`` when it is a plain token of at most 64 characters, else None."""
    if value and _ACCEPTED_ID.fullmatch(value):
        return value
    return None


def current_request_id() -> Optional[str]:
    """The id of the request this thread is serving (set by :func:`serve_with_request_id`), None outside one."""
    return _current_id.get()


def serve_with_request_id(app: Callable, environ: dict, start_response: Callable) -> Iterable[bytes]:
    """``app(environ, start_response)`` with the request's id decided first (the caller's, else a new one):
    in ``environ``, in :func:`current_request_id` for the call, and in the reply's ``X-Request-ID``. Run
    outermost (app.py's Admission), so a busy 503 or a Basic-auth 401 has one too."""
    request_id = accepted_request_id(environ.get("HTTP_X_REQUEST_ID")) or new_request_id()
    environ[ENVIRON_KEY] = request_id

    def tagged(status: str, headers: list, exc_info: Any = None):
        if not any(name.lower() == REQUEST_ID_HEADER.lower() for name, _ in headers):
            headers = [*headers, (REQUEST_ID_HEADER, request_id)]
        return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

    token = _current_id.set(request_id)
    try:
        return app(environ, tagged)
    finally:
        _current_id.reset(token)


# ----- what one error is -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErrorEvent:
    """One 4xx/5xx answer: a whole request's, or one task's inside a /predict reply."""

    status: int
    reason: str
    method: str
    route: str
    request_id: Optional[str]
    task_ids: tuple = ()  # Label Studio task ids (ints) the error is about; () when unknown
    at: float = field(default_factory=time.time)  # epoch seconds

    def line(self) -> str:
        ids = ",".join(str(t) for t in self.task_ids[:MAX_TASK_IDS]) or "-"
        if len(self.task_ids) > MAX_TASK_IDS:
            ids += f",...({len(self.task_ids)} tasks)"
        rid = self.request_id or "-"
        return f"{self.method} {self.route} {self.status} request_id={rid} task_id={ids}: {self.reason}"

    def as_json(self) -> dict:
        return {"at": _iso(self.at), "status": self.status, "reason": self.reason, "route": self.route,
                "task_ids": list(self.task_ids[:MAX_TASK_IDS]), "request_id": self.request_id}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Redactor:
    """Masks what must never reach a log: URL queries and user info, and the configured secret values."""

    def __init__(self, secrets: Iterable[Optional[str]] = ()):
        # longest first, so a secret containing another is masked whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = " ".join(str(text).split())  # one line: a reason cannot start a forged log line
        text = _USERINFO.sub(r"\1***@", text)
        text = _URL_QUERY.sub(r"\1?***", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "..."


# ----- the per-process tally of /health --------------------------------------------------------------------
class RecentErrors:
    """Errors of the last ``window_s`` by status code, and the last one. Per process: with several gunicorn
    workers each counts what it answered (as /metrics does: one registry per process). Bounded: per-minute
    buckets over the window, each a Counter of status codes."""

    def __init__(self, window_s: int = WINDOW_S, bucket_s: int = BUCKET_S, clock: Callable[[], float] = time.time):
        self.window_s, self.bucket_s, self.clock = window_s, bucket_s, clock
        self._buckets: deque[tuple[int, Counter]] = deque(maxlen=window_s // bucket_s + 1)
        self._last: Optional[ErrorEvent] = None
        self._lock = threading.Lock()

    def record(self, event: ErrorEvent) -> None:
        slot = int(event.at // self.bucket_s)
        with self._lock:
            if not self._buckets or self._buckets[-1][0] < slot:
                self._buckets.append((slot, Counter()))
            self._buckets[-1][1][event.status] += 1  # a clock stepping back counts in the newest bucket
            self._last = event

    def summary(self) -> dict:
        """/health's block: ``{"window_s", "per": "process", "pid", "total", "by_status", "last"}``."""
        oldest = int((self.clock() - self.window_s) // self.bucket_s)
        with self._lock:
            while self._buckets and self._buckets[0][0] < oldest:
                self._buckets.popleft()
            counts: Counter = Counter()
            for _, bucket in self._buckets:
                counts.update(bucket)
            last = self._last
        return {"window_s": self.window_s, "per": "process", "pid": os.getpid(), "total": sum(counts.values()),
                "by_status": {str(code): n for code, n in sorted(counts.items())},
                "last": last.as_json() if last is not None else None}


# ----- reporting ---------------------------------------------------------------------------------------------
class ErrorReporter:
    """Logs an :class:`ErrorEvent` (reason redacted) and counts it; ``on_error(scope, status)`` is told of
    each one (the Prometheus counter)."""

    def __init__(self, redact: Redactor, recent: Optional[RecentErrors] = None,
                 on_error: Optional[Callable[[str, int], None]] = None):
        self.redact = redact
        self.recent = recent or RecentErrors()
        self.on_error = on_error or (lambda scope, status: None)

    def report(self, event: ErrorEvent, scope: str = "request", logged: bool = True) -> ErrorEvent:
        """Log (unless ``logged`` is False: counted only) and count ``event``; the redacted event."""
        event = ErrorEvent(event.status, self.redact(event.reason), event.method, event.route, event.request_id,
                           event.task_ids, event.at)
        if logged:
            log.log(logging.ERROR if event.status >= 500 else logging.WARNING, "%s", event.line())
        self.recent.record(event)
        self.on_error(scope, event.status)
        return event

    def report_tasks(self, tasks: list, results: list, method: str, route: str, request_id: Optional[str]) -> int:
        """Every per-task error of a /predict reply (``results[i]`` answers ``tasks[i]``); the count."""
        failed = [(task, r) for task, r in zip(tasks, results) if isinstance(r, dict) and "result" not in r]
        for n, (task, result) in enumerate(failed):
            event = ErrorEvent(_status(result.get("status")), str(result.get("error", "no reason given")),
                               method, route, request_id, task_ids([task]))
            self.report(event, scope="task", logged=n < MAX_TASK_LINES)
        if len(failed) > MAX_TASK_LINES:
            log.warning("%s %s request_id=%s: %d more task errors, counted but not logged one by one", method,
                        route, request_id or "-", len(failed) - MAX_TASK_LINES)
        return len(failed)


def _status(value: Any) -> int:
    """A per-task entry's status; an entry without a usable one counts as 500 (our bug, not the caller's)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599 else 500


def task_ids(tasks: Any) -> tuple:
    """The valid Label Studio ids of ``tasks`` (anything else is caller input not worth logging)."""
    if not isinstance(tasks, list):
        return ()
    return tuple(i for i in (task_id(t) for t in tasks) if i is not None)


# ----- Flask glue ----------------------------------------------------------------------------------------------
def install(app: Any, reporter: ErrorReporter) -> None:
    """On ``app`` (after ``http_guard.install``): :func:`serve_with_request_id`'s id becomes ``g.request_id``, and
    every 4xx/5xx JSON reply not already reported per task is reported with its ``error`` reason."""
    from flask import g, request

    @app.before_request
    def adopt_request_id():
        # http_guard makes up an id of its own; the one decided outermost (the caller's, if it sent one) wins
        g.request_id = request.environ.get(ENVIRON_KEY) or g.get("request_id") or new_request_id()

    @app.after_request
    def report_error(response):
        if "request_id" not in g:  # a before_request hook answered early (Basic auth's 401)
            g.request_id = request.environ.get(ENVIRON_KEY) or new_request_id()
        if response.status_code < 400 or g.get("errors_reported") or request.path in QUIET_ROUTES:
            return response
        reporter.report(ErrorEvent(response.status_code, _reason(response), method_label(request.method),
                                   _route(request), g.request_id, g.get("task_ids", ())))
        return response


def report_task_errors(reporter: ErrorReporter, tasks: list, results: list) -> int:
    """``reporter.report_tasks`` for the /predict being served; its whole-request reply (every task failed)
    is then not reported a second time."""
    from flask import g, request

    count = reporter.report_tasks(tasks, results, method_label(request.method), _route(request), g.get("request_id"))
    if count:
        g.errors_reported = True
    return count


def _route(request: Any) -> str:
    # the url rule, not the path: a caller cannot write what it likes into the log
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _reason(response: Any) -> str:
    if response.is_json and not response.direct_passthrough:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    return "no reason given"
