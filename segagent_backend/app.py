"""The Flask app: Label Studio's ML backend contract (``create_app(settings)``, nothing heavy at import)."""
from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Optional

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .corrections import CorrectionStore
from .errors import ModelUnavailable, RequestError
from .labelstudio.config import parse_label_config
from .labelstudio.predictions import Predictions
from .labelstudio.sources import ProjectSources
from .learning import list_reports
from .metrics import Metrics
from .model_host import ModelHost
from .queue.dispatch import InlineDispatcher, PredictRequest, QueueDispatcher
from .queue.names import BATCH, TRAIN
from .queue.preannotate import planning_starter
from .queue.training import ThreadStarter, queued_starter
from .registry import Registry
from .settings import Settings
from .versions import VersionName
from .webhook import handle_webhook
from .wiring import media_loader

log = logging.getLogger(__name__)


def create_app(settings: Optional[Settings] = None, host: Optional[ModelHost] = None) -> Flask:
    """Build the service. ``settings`` default to the environment.

    Without ``REDIS_URL`` the model lives in this process (``host``, default: built from the settings)
    and loads in the background when ``settings.preload`` (else on the first request that needs it).
    With ``REDIS_URL`` this process loads no model: /predict becomes jobs for ``segagent worker``
    processes, and this process only names the version they serve.
    """
    settings = settings or Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = Registry.from_settings(settings)
    sources = ProjectSources.from_settings(settings)
    metrics = Metrics()
    if settings.redis_url:
        host = None
        named = VersionName(settings, registry)
        dispatcher = QueueDispatcher(settings, sources, named, metrics.observe_job)
        metrics.watch_queues(dispatcher.snapshot)
        start_training = queued_starter(settings, lambda: dispatcher.queue(TRAIN))  # a job on the train queue
        queue_preannotation = planning_starter(settings, lambda: dispatcher.queue(BATCH))
        version, refresh = named, named.refresh
    else:
        host = host or ModelHost(settings, registry)
        dispatcher = InlineDispatcher(Predictions(host, media_loader(settings), sources))
        metrics.cache_bytes.set_function(lambda: host.cache.nbytes)
        metrics.cache_entries.set_function(lambda: len(host.cache))
        metrics.model_ready.set_function(lambda: 1.0 if host.status == "ready" else 0.0)
        start_training = ThreadStarter(settings)  # a thread of this process
        queue_preannotation = None  # pre-annotation runs on queue workers only
        version, refresh = host, host.maybe_reload
    store = CorrectionStore.from_settings(settings)

    app = Flask(__name__)
    app.config.update(SEGAGENT_SETTINGS=settings, SEGAGENT_HOST=host, SEGAGENT_VERSION=version,
                      SEGAGENT_SOURCES=sources, SEGAGENT_METRICS=metrics, SEGAGENT_DISPATCHER=dispatcher)
    _install_auth(app, settings)
    _install_metrics(app, metrics)
    _install_errors(app)

    @app.get("/")
    @app.get("/health")
    def health():
        refresh(background=True)  # Label Studio gives /health 1 s: a promoted version loads off-thread
        body = {"status": "UP", "model_class": "SegAgent", "model_version": version.model_version,
                "segmenter": settings.segmenter, "mode": dispatcher.mode}
        if host is not None:
            body["model"] = host.status
            body["embedding_cache"] = {"entries": len(host.cache), "bytes": host.cache.nbytes}
            if host.reload_error:  # still serving the old version: UP, but say why it did not change
                body["reload_error"] = host.reload_error
            usable = not host.status.startswith("failed")
        else:  # the models live in the workers: report theirs
            usable, fields = dispatcher.health()
            body.update(fields)
            body["model"] = "ready" if any(w["model"] == "ready" for w in fields["workers"]) else "no worker"
        latest = list_reports(settings, last=1)
        if latest:  # the newest training round, so a failed or kept one is seen where people look
            r = latest[0]
            body["training"] = {"run": r.run, "status": r.status, "reason": r.reason, "version": r.version}
        if not usable:
            body["status"] = "ERROR"
            return jsonify(body), 503
        return jsonify(body)

    @app.post("/setup")
    def setup():
        body = _json_object()
        # Label Studio gives /setup 3 s: a newly promoted version loads off-thread, never here
        refresh(background=True)
        parse_label_config(body.get("schema"), settings.expression_field)  # checked; nothing loads
        sources.remember(body.get("project"), body.get("hostname"), body.get("access_token"))
        return jsonify({"model_version": version.model_version})

    @app.post("/predict")
    def predict():
        body = _json_object()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise RequestError("'tasks' must be a non-empty list of Label Studio tasks")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError("'params' must be an object")
        refresh()  # cheap unless a version was promoted since the last request
        results = dispatcher.predict(PredictRequest(tasks, body.get("label_config"), params.get("context"),
                                                    body.get("project")))
        failed = [r for r in results if "result" not in r]
        metrics.predictions.labels("ok").inc(len(results) - len(failed))
        metrics.predictions.labels("error").inc(len(failed))
        if failed and len(failed) == len(results):
            # nothing to show: answer with the error so Label Studio reports it instead of storing nothing
            return jsonify({"error": failed[0]["error"], "results": results}), failed[0]["status"]
        return jsonify({"results": results})

    @app.post("/webhook")
    def webhook():
        body = _json_object()
        reply = handle_webhook(body, settings, queue_preannotation, start_training, store)
        metrics.webhooks.labels(reply["action"] if reply["known"] else "unknown").inc()
        return jsonify(reply)

    @app.get("/versions")
    def versions():
        # the serving version first, then every registered one (newest first) Label Studio may pick from
        registered = [m.version for m in reversed(registry.list_versions())]
        serving = version.model_version
        return jsonify({"versions": [serving] + [v for v in registered if v != serving]})

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(), mimetype=metrics.content_type)

    if settings.preload and host is not None:
        host.load(background=True)
    return app


def _json_object() -> dict:
    body = request.get_json(silent=True)
    if body is None:
        raise RequestError("the request body must be JSON (Content-Type: application/json)")
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _install_auth(app: Flask, settings: Settings) -> None:
    if settings.basic_auth_user is None:
        return
    user, password = settings.basic_auth_user.encode(), settings.basic_auth_pass.encode()

    @app.before_request
    def require_basic_auth():
        auth = request.authorization
        given_user = (auth.username or "").encode() if auth and auth.type == "basic" else b""
        given_pass = (auth.password or "").encode() if auth and auth.type == "basic" else b""
        # both comparisons always run, in constant time, so timing tells nothing
        ok = hmac.compare_digest(given_user, user) & hmac.compare_digest(given_pass, password)
        if not ok:
            reply = jsonify({"error": "authentication required (HTTP Basic)"})
            reply.headers["WWW-Authenticate"] = 'Basic realm="segagent"'
            return reply, 401
        return None


def _install_metrics(app: Flask, metrics: Metrics) -> None:
    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def record(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        if "started" in g:
            metrics.latency.labels(route).observe(time.perf_counter() - g.started)
        return response


def _install_errors(app: Flask) -> None:
    def reply(message: str, status: int, **extra: Any):
        return jsonify({"error": message, **extra}), status

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError):
        return reply(exc.message, exc.status)

    @app.errorhandler(ModelUnavailable)
    def model_unavailable(exc: ModelUnavailable):
        return reply(str(exc), 503)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return reply(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return reply(f"internal error: {type(exc).__name__}: {exc}", 500)
