"""The OpenAPI 3.1 description of every route, served at ``/openapi.json``.

The request schemas here are what the app validates JSON bodies against (``http_guard.json_body``), so
the description and the checks cannot drift apart. They check shapes and types only; what a value means
(a label the config has, a percent in 0..100, a config that parses) stays in the parsers. Limits taken
from the settings carry ``x-setting``: a body beyond one is answered 413 naming that variable.
"""
from __future__ import annotations

from typing import Any

from .labelstudio.config import EXAMPLE_CONFIG
from .settings import Settings

MAX_ID = 2**63 - 1
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
# Label Studio sends the project as "<id>.<timestamp>" to /setup and /predict, and as an id elsewhere
PROJECT_REF = {"type": ["string", "integer", "null"], "maxLength": 64, "pattern": r"^[0-9]+(\.[0-9]+)?$",
               "minimum": 1, "maximum": MAX_ID}
# ids become file names (corrections) and URL paths: only positive integers, never `/`, NUL or strings
ANNOTATION_IDS = {"id": ID, "task": ID, "result": {"type": ["array", "null"], "items": {"type": "object"}}}
NULLABLE_STRING = {"type": ["string", "null"], "maxLength": 4096}
LABELS = {"type": ["array", "null"], "items": {"type": "string", "maxLength": 1024}, "maxItems": 1000}
FINITE = {"type": "number"}  # NaN and Infinity are not JSON: the body loader refuses them
OPTIONAL_FINITE = {"type": ["number", "null"]}
SIDE = {"type": ["integer", "null"], "minimum": 1}

REGION = {
    "type": "object",
    "description": "A Label Studio region of the interactive context (a smart KeyPointLabels or RectangleLabels).",
    "required": ["type"],
    "properties": {
        "id": {"type": ["string", "integer"], "maxLength": 256},
        "type": {"type": "string", "maxLength": 64},
        "from_name": {"type": "string"},
        "to_name": {"type": "string"},
        "original_width": SIDE,
        "original_height": SIDE,
        "image_rotation": OPTIONAL_FINITE,
        "is_positive": {"type": ["boolean", "null"]},
        "value": {
            "type": "object",
            "properties": {
                "x": FINITE, "y": FINITE, "width": FINITE, "height": FINITE, "rotation": OPTIONAL_FINITE,
                "keypointlabels": LABELS, "rectanglelabels": LABELS, "labels": LABELS,
            },
        },
    },
}

TASK = {
    "type": "object",
    "description": "A Label Studio task: its image URL sits in `data` under the Image tag's `value`.",
    "required": ["data"],
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "data": {"type": "object"}},
}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, naming the field (e.g. `tasks[0].data`)."},
        "field": {"type": "string", "description": "The field path the error is about, when there is one."},
        "request_id": {"type": "string", "description": "Quote it to the operator: the server log has the details."},
    },
}


CLICK = {"id": "k1", "type": "keypointlabels", "from_name": "click", "to_name": "image", "original_width": 640,
         "original_height": 480, "image_rotation": 0, "is_positive": True,
         "value": {"x": 42.5, "y": 61.0, "width": 0.3, "keypointlabels": ["Object"]}}
# a 4x4 image with a 2x2 object, in Label Studio's brush RLE
BRUSH = {"id": "b1", "type": "brushlabels", "from_name": "mask", "to_name": "image", "original_width": 4,
         "original_height": 4, "value": {"format": "rle", "brushlabels": ["Object"],
                                         "rle": [0, 0, 0, 64, 57, 27, 254, 19, 0, 159, 254, 112, 9, 255, 240, 152, 0]}}
EXAMPLES = {
    "/setup": {"project": "1.1700000000", "schema": EXAMPLE_CONFIG, "hostname": "http://localhost:8080"},
    "/predict": {"tasks": [{"id": 1, "data": {"image": "/data/upload/1/cat.png", "expression": "the cat"}}],
                 "label_config": EXAMPLE_CONFIG, "project": "1.1700000000",
                 "params": {"context": {"result": [CLICK]}}},
    "/webhook": {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": EXAMPLE_CONFIG},
                 "annotation": {"id": 5, "task": 1, "result": [BRUSH]},
                 "task": {"id": 1, "data": {"image": "/data/upload/1/cat.png"}}},
    "/audit": {"task": {"id": 1, "data": {"image": "/data/upload/1/cat.png", "expression": "the cat"}},
               "annotation": {"id": 5, "result": [BRUSH]}, "label_config": EXAMPLE_CONFIG},
}


def _json(schema: Any, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    reasons = {400: "a caller mistake, naming the field", 401: "HTTP Basic credentials required",
               404: "no such route", 413: "a body or field beyond a limit (names the setting)",
               422: "a task image that cannot be used", 500: "internal error (with a request id)",
               501: "needs a policy model", 502: "media could not be fetched",
               503: "model loading or job queue unreachable", 504: "no answer in time",
               507: "corrections not recorded: past SEGAGENT_CORRECTIONS_MAX_MB"}
    return {str(c): _json({"$ref": "#/components/schemas/Error"}, reasons[c]) for c in codes}


def request_schemas(settings: Settings) -> dict[str, dict]:
    """The JSON body schema of each POST route, with the limits of ``settings``."""
    config_text = {"type": "string", "maxLength": settings.max_label_config_kb * 1024,
                   "x-setting": "SEGAGENT_MAX_LABEL_CONFIG_KB", "description": "Label Studio's label config (XML)."}
    return {
        "/setup": {
            "type": "object",
            "properties": {
                "project": PROJECT_REF, "schema": config_text, "hostname": NULLABLE_STRING,
                "access_token": NULLABLE_STRING, "model_version": NULLABLE_STRING,
            },
        },
        "/predict": {
            "type": "object",
            "required": ["tasks"],
            "properties": {
                "tasks": {"type": "array", "items": TASK, "minItems": 1, "maxItems": settings.max_tasks,
                          "x-setting": "SEGAGENT_MAX_TASKS"},
                "label_config": config_text,
                "project": PROJECT_REF,
                "model_version": NULLABLE_STRING,
                "params": {
                    "type": ["object", "null"],
                    "properties": {
                        "context": {
                            "type": ["object", "null"],
                            "description": "Interactive context: every region the annotator drew so far.",
                            "properties": {"result": {"type": ["array", "null"], "items": REGION}},
                        },
                    },
                },
            },
        },
        "/audit": {
            "type": "object",
            "required": ["task", "annotation", "label_config"],
            "properties": {
                "task": TASK,
                "annotation": {
                    "type": "object",
                    "description": "The annotation to audit: its brush regions (Label Studio brush RLE) are the mask.",
                    "required": ["result"],
                    "properties": {"id": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_ID},
                                   "result": {"type": "array", "items": {"type": "object"}, "minItems": 1,
                                              "maxItems": 1000}},
                },
                "label_config": config_text,
                "project": PROJECT_REF,
            },
        },
        "/webhook": {
            "type": "object",
            "required": ["action"],
            "properties": {
                "action": {"type": "string", "minLength": 1, "maxLength": 64},
                "project": {
                    "type": ["object", "integer", "null"], "minimum": 1, "maximum": MAX_ID,
                    "properties": {"id": ID, "label_config": config_text},
                },
                "annotation": {"type": ["object", "array"], "properties": ANNOTATION_IDS,
                               "items": {"type": "object", "properties": ANNOTATION_IDS},
                               "maxItems": settings.max_webhook_annotations,
                               "x-setting": "SEGAGENT_MAX_WEBHOOK_ANNOTATIONS"},
                "task": {"type": ["object", "array", "null"], "properties": {"id": ID},
                         "items": {"type": ["object", "null"], "properties": {"id": ID}},
                         "maxItems": settings.max_webhook_annotations,
                         "x-setting": "SEGAGENT_MAX_WEBHOOK_ANNOTATIONS"},
                "annotations": {"type": "array", "items": {"type": "object", "properties": {"id": ID}}},
                "tasks": {"type": "array", "items": {"type": "object", "properties": {"id": ID}}},
            },
        },
    }


def spec(settings: Settings) -> dict:
    """The OpenAPI document of an app built with ``settings``."""
    from . import __version__

    bodies = request_schemas(settings)

    def post(summary: str, path: str, ok: dict, *errors: int) -> dict:
        return {"post": {
            "summary": summary, "operationId": path.strip("/"),
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": bodies[path], "example": EXAMPLES[path]}}},
            "responses": {"200": ok, **_errors(400, 413, 500, *errors)},
        }}

    def get(summary: str, op: str, ok: dict, *errors: int) -> dict:
        return {"get": {"summary": summary, "operationId": op, "responses": {"200": ok, **_errors(500, *errors)}}}

    health = _json({"type": "object", "required": ["status", "model_version"],
                    "properties": {"status": {"type": "string", "enum": ["UP", "ERROR"]},
                                   "model_version": {"type": "string"}, "mode": {"type": "string"}}},
                   "the service is up (503 with status ERROR when its model failed or Redis is unreachable)")
    predictions = _json({"type": "object", "properties": {"results": {"type": "array", "items": {"type": "object"}}}},
                        "one entry per task: {result, score, model_version} or {error, status, model_version}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "segagent-backend", "version": __version__,
                 "description": "A Label Studio ML backend (the v2 wire contract of Label Studio 1.23)."},
        "paths": {
            "/": get("Health (Label Studio's first call)", "root", health, 503),
            "/health": get("Health", "health", health, 503),
            "/setup": post("Check the label config; answer the model version", "/setup",
                           _json({"type": "object", "properties": {"model_version": {"type": "string"}}},
                                 "the config is usable")),
            "/predict": post("Predictions for tasks (automatic, or interactive with params.context)", "/predict",
                             predictions, 422, 501, 502, 503, 504),
            "/audit": post("The policy's IoU estimate of one annotation's brush mask (embedded mode)", "/audit",
                           _json({"type": "object", "required": ["score", "model_version"],
                                  "properties": {"score": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                                                 "model_version": {"type": "string"},
                                                 "reason": {"type": "string"}}},
                                 "score: the estimate 0..1 (null, with a reason, when the policy's answer gives "
                                 "none); model_version: audit-<serving version>"), 422, 501, 502, 503),
            "/webhook": post("A Label Studio webhook event", "/webhook",
                             _json({"type": "object", "required": ["status", "action"]}, "acknowledged"), 503, 507),
            "/versions": get("Model versions Label Studio may pick", "versions",
                             _json({"type": "object", "properties": {"versions": {"type": "array",
                                                                                  "items": {"type": "string"}}}},
                                   "the serving version first")),
            "/metrics": get("Prometheus metrics", "metrics",
                            {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}),
            "/openapi.json": get("This description", "openapi", _json({"type": "object"}, "OpenAPI 3.1")),
        },
        "components": {"schemas": {"Error": ERROR}},
    }
