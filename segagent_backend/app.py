"""The Flask app: Label Studio's ML backend contract (``create_app(settings)``, nothing heavy at import)."""
from __future__ import annotations

import hmac
import logging
import time
from typing import Optional
from urllib.parse import urlsplit

from flask import Flask, Response, g, jsonify, request

from . import assembly, error_log, http_guard, openapi
from .admission import Admission
from .annotation_audit import audit_annotation
from .corrections import CorrectionStore
from .error_log import (ErrorEvent, ErrorReporter, Redactor, current_request_id, report_task_errors,
                        serve_with_request_id, task_ids)
from .errors import RequestError
from .http_guard import json_body
from .labelstudio.config import parse_label_config
from .labelstudio.request import parse_predict
from .labelstudio.sources import ProjectSources
from .learning import list_reports
from .prometheus import Metrics, method_label
from .model_host import ModelHost
from .queue.dispatch import InlineDispatcher, QueueDispatcher
from .queue.names import BATCH, TRAIN
from .queue.planner import planning_starter
from .queue.training import ThreadStarter, queued_starter
from .registry import Registry
from .settings import Settings
from .versions import VersionName
from .webhook import handle_webhook

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
    # never log a configured secret, even if a message were ever to quote one
    secrets = [settings.label_studio_api_key, settings.basic_auth_user, settings.basic_auth_pass,
               urlsplit(settings.redis_url).password if settings.redis_url else None]
    errors = ErrorReporter(Redactor(secrets), on_error=metrics.count_error)
    if settings.redis_url:
        host = None
        named = VersionName(settings, registry)
        dispatcher = QueueDispatcher(settings, named, metrics.observe_job)
        metrics.watch_queues(dispatcher.snapshot)
        start_training = queued_starter(settings, lambda: dispatcher.queue(TRAIN))  # a job on the train queue
        queue_preannotation = planning_starter(settings, lambda: dispatcher.queue(BATCH))
        media = None  # POST /audit runs embedded only
        version, refresh = named, named.refresh
    else:
        predictions = assembly.predictions(settings, sources, host or assembly.model_host(settings, registry))
        host, media = predictions.host, predictions.media
        dispatcher = InlineDispatcher(predictions)
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
    http_guard.install(app, settings)  # body limit, request ids, schema validation, JSON errors
    error_log.install(app, errors)  # every 4xx/5xx logged with its reason, task ids and request id
    config_chars = settings.max_label_config_kb * 1024

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
        body["errors"] = errors.recent.summary()  # this process's recent errors and the last reason
        if latest:  # the newest training round, so a failed or kept one is seen where people look
            r = latest[0]
            body["training"] = {"run": r.run, "status": r.status, "reason": r.reason, "version": r.version}
        if not usable:
            body["status"] = "ERROR"
            return jsonify(body), 503
        return jsonify(body)

    @app.post("/setup")
    def setup():
        body = json_body("/setup")
        # Label Studio gives /setup 3 s: a newly promoted version loads off-thread, never here
        refresh(background=True)
        parse_label_config(body.get("schema"), settings.expression_field, config_chars)  # checked; nothing loads
        sources.remember(body.get("project"), body.get("hostname"), body.get("access_token"))
        return jsonify({"model_version": version.model_version})

    @app.post("/predict")
    def predict():
        body = json_body("/predict")  # tasks: 1..SEGAGENT_MAX_TASKS objects with data (the OpenAPI schema)
        tasks = body["tasks"]
        g.task_ids = task_ids(tasks)  # named by the log line of a whole-request error
        # parsed here, ONCE, in every mode, before anything is queued: the config (size, tags) and the clicks
        # (count, fields, claimed image size); the parsed request is what the model (or the worker) gets
        asked = parse_predict(body, settings)
        refresh()  # cheap unless a version was promoted since the last request
        results = dispatcher.predict(asked)
        report_task_errors(errors, tasks, results)  # each reason in the log: Label Studio's screen drops it
        failed = [r for r in results if "result" not in r]
        metrics.predictions.labels("ok").inc(len(results) - len(failed))
        metrics.predictions.labels("error").inc(len(failed))
        if failed and len(failed) == len(results):
            # nothing to show: answer with the error so Label Studio reports it instead of storing nothing
            return jsonify({"error": failed[0]["error"], "results": results, "request_id": g.request_id}), \
                failed[0]["status"]
        return jsonify({"results": results})

    @app.post("/audit")
    def audit():
        body = json_body("/audit")  # task with data, annotation with a result list, label_config
        if host is None:
            raise RequestError("POST /audit runs in embedded mode (no REDIS_URL); with the queues, audit a project "
                               "with `segagent audit --project ID`", 501)
        refresh()
        return jsonify(audit_annotation(host, media, sources, body, config_chars))

    @app.post("/webhook")
    def webhook():
        body = json_body("/webhook")
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

    description = openapi.spec(settings)

    @app.get("/openapi.json")
    def openapi_json():
        return jsonify(description)

    _install_admission(app, settings, metrics, errors)
    if settings.preload and host is not None:
        host.load(background=True)
    return app


def _install_admission(app: Flask, settings: Settings, metrics: Metrics, errors: ErrorReporter) -> None:
    """THREADS model requests at once; one more is 503 busy (counted), so /health always finds a thread."""
    routes = {rule.rule for rule in app.url_map.iter_rules()}

    def count_busy(path: str, method: str) -> None:
        route = path if path in routes else "unmatched"
        metrics.requests.labels(route, method_label(method), "503").inc()
        # answered outside Flask, so error_log's after_request never sees it
        errors.report(ErrorEvent(503, f"busy: more than THREADS={settings.threads} model requests at once",
                                 method_label(method), route, current_request_id()))

    app.wsgi_app = _IdentifiedAdmission(app.wsgi_app, settings.threads, on_busy=count_busy)


class _IdentifiedAdmission(Admission):
    """Admission, every request of which (a busy 503 too) has its request id first (``error_log``)."""

    def __call__(self, environ: dict, start_response):
        return serve_with_request_id(super().__call__, environ, start_response)


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
        # bounded labels: a route of the app or "unmatched", GET/POST/other, the status code
        metrics.requests.labels(route, method_label(request.method), str(response.status_code)).inc()
        if "started" in g:
            metrics.latency.labels(route).observe(time.perf_counter() - g.started)
        return response
