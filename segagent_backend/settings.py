"""The one settings object, read from the environment in one place.

Every variable is listed in ``FIELDS`` with its default and meaning; the README table is made
from the same list (``python -m segagent_backend.settings`` prints it). A bad value fails at start
with a ``SettingsError`` that names the variable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlparse

SEGMENTERS = ("grabcut", "sam", "hf-sam")
POLICY_KINDS = ("hf-vlm", "qwen-vl-chat")
COORDINATES = ("qwen", "llava")
DTYPES = ("auto", "bfloat16", "float16", "float32")
SAM_TYPES = ("vit_b", "vit_l", "vit_h")
TRAIN_METHODS = ("lora", "full")
PROTOCOLS = ("release", "extended")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A setting has a value the service cannot start with."""


# (environment variable, attribute, default, description)
FIELDS: tuple[tuple[str, str, Optional[str], str], ...] = (
    ("SEGAGENT_SEGMENTER", "segmenter", "grabcut", "Interactive tool: `grabcut` (no weights), `sam` (segment-anything .pth), `hf-sam` (transformers SamModel)."),
    ("SEGAGENT_SAM_CHECKPOINT", "sam_checkpoint", None, "Path of a segment-anything `.pth` checkpoint (required with `sam`)."),
    ("SEGAGENT_SAM_TYPE", "sam_type", None, "`vit_b`, `vit_l` or `vit_h`: checked against the checkpoint (optional; inferred when unset)."),
    ("SEGAGENT_SAM_MODEL", "sam_model", None, "Hub id or local folder of a transformers SAM model (required with `hf-sam`)."),
    ("SEGAGENT_POLICY", "policy", None, "Hub id or folder of the SegAgent policy (a multimodal LLM); unset = interactive tools only."),
    ("SEGAGENT_POLICY_KIND", "policy_kind", "hf-vlm", "`hf-vlm` (transformers chat VLMs: Qwen2-VL, Qwen2.5-VL, LLaVA) or `qwen-vl-chat` (the released SegAgent-Qwen, run natively)."),
    ("SEGAGENT_COORDINATES", "coordinates", "qwen", "How the policy writes clicks: `qwen` ((row, col) integers on 0..999) or `llava` (decimals in [0, 1))."),
    ("SEGAGENT_DTYPE", "dtype", "auto", "Policy weights: `auto` (bf16 on GPU, fp32 on CPU), `bfloat16`, `float16`, `float32`."),
    ("SEGAGENT_MAX_STEPS", "max_steps", "7", "Policy clicks per episode at most (7 for referring segmentation, 11 for high-quality masks)."),
    ("SEGAGENT_CANDIDATES", "candidates", "1", "Clicks sampled per step for tree search (1 = greedy)."),
    ("SEGAGENT_STOP_IOU", "stop_iou", "0.95", "Stop once the policy's own IoU estimate of the mask reaches this."),
    ("SEGAGENT_PATIENCE", "patience", "3", "Stop after this many steps without a better estimate."),
    ("SEGAGENT_PROTOCOL", "protocol", None, "`release`: the paper's evaluation rules exactly (`SEGAGENT_MAX_STEPS` calls, no early stop, the release's mask selection, parser and overlay); `extended`: PRM stop, patience, tree search. Default: `release` for `qwen-vl-chat`, `extended` for `hf-vlm`."),
    ("SEGAGENT_TEMPERATURE", "temperature", "1.0", "Sampling temperature of tree-search candidates."),
    ("SEGAGENT_REFINE", "refine", "false", "Interactive calls: let the policy continue from the annotator's clicks (true) or only follow them (false)."),
    ("DEVICE", "device", "auto", "`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`."),
    ("MODEL_DIR", "model_dir", "./models", "Working directory for models, versions and the media download cache (`MODEL_DIR/cache/media`)."),
    ("REDIS_URL", "redis_url", None, "Redis for the job queues: set, the web process loads no model and `segagent worker` processes run the jobs; unset = every job runs in-process (embedded mode)."),
    ("SEGAGENT_QUEUE_PREFIX", "queue_prefix", "segagent", "Name prefix of the queues (`<prefix>-interactive`, `-batch`, `-train`) and of the worker health keys: one prefix per deployment sharing a Redis."),
    ("SEGAGENT_PREDICT_DEADLINE", "predict_deadline", "90", "Seconds a batch /predict waits for its jobs (below Label Studio's 100 s); unfinished tasks get a per-task error."),
    ("SEGAGENT_INTERACTIVE_DEADLINE", "interactive_deadline", "20", "Seconds an interactive /predict (a click) waits for its job before answering with an error."),
    ("SEGAGENT_BATCH_CHUNK", "batch_chunk", "4", "Tasks per batch job: a multi-task /predict fans out as jobs of this many tasks, run in lockstep on a worker."),
    ("SEGAGENT_JOB_TIMEOUT", "job_timeout", "600", "Seconds a job may run on a worker before it is stopped and counted as failed."),
    ("SEGAGENT_JOB_RETRIES", "job_retries", "2", "Times a job is re-queued after its worker died mid-job or it crashed (0 = never)."),
    ("SEGAGENT_TRANSIENT_RETRIES", "transient_retries", "2", "Times a worker retries tasks that failed transiently (image host unreachable, CUDA out of memory) within one job."),
    ("SEGAGENT_RETRY_BACKOFF", "retry_backoff", "0.5", "Seconds before the first transient retry; doubles on each further retry."),
    ("SEGAGENT_WORKER_HEARTBEAT", "worker_heartbeat", "10", "Seconds between worker heartbeats; a running job whose worker missed two heartbeats is re-queued."),
    ("SEGAGENT_REDIS_TIMEOUT", "redis_timeout", "2", "Seconds the web process waits for Redis to connect or answer before it reports Redis unreachable."),
    ("SEGAGENT_PREANNOTATE_ON_CREATE", "preannotate_on_create", "false", "A `TASKS_CREATED` webhook queues pre-annotation of the new tasks (needs `REDIS_URL`, `LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY`)."),
    ("SEGAGENT_TRAIN_EVERY", "train_every", "50", "Queue a training round after this many new corrections of a project (annotations submitted or updated); 0 = only on Start Training."),
    ("SEGAGENT_TRAIN_METHOD", "train_method", "lora", "`lora` (peft adapters on the language model, merged into the saved version) or `full` fine-tuning (the vision tower stays frozen either way)."),
    ("SEGAGENT_TRAIN_EPOCHS", "train_epochs", "2", "Epochs over a round's samples."),
    ("SEGAGENT_TRAIN_LR", "train_lr", "0.0001", "Peak learning rate (cosine schedule)."),
    ("SEGAGENT_TRAIN_BATCH", "train_batch", "4", "Samples per training step."),
    ("SEGAGENT_TRAIN_STOP_SAMPLES", "train_stop_samples", "false", "Add one stop sample per trajectory (the final mask with the estimate alone) so the policy learns to stop; off = the release's SFT data."),
    ("SEGAGENT_TRAIN_SAVE_STEPS", "train_save_steps", "200", "Optimizer steps between training checkpoints: a round whose worker dies resumes from the last one."),
    ("SEGAGENT_STAR_ROUNDS", "star_rounds", "0", "StaR+ rounds after SFT: roll the policy out on the training images, keep its good clicks, replace the others with the simulator's, train again."),
    ("SEGAGENT_HOLDOUT", "holdout", "0.2", "Fraction of a round's annotated tasks held out to compare the candidate with the serving policy (at least one)."),
    ("SEGAGENT_FORCE_PROMOTE", "force_promote", "false", "Promote every trained candidate, even when it scores worse than the serving policy on the held-out tasks."),
    ("SEGAGENT_TRAIN_TIMEOUT", "train_timeout", "21600", "Seconds a training round may run on a worker before it is stopped (a retried round resumes from its checkpoints)."),
    ("LABEL_STUDIO_URL", "label_studio_url", None, "Label Studio base URL (http:// or https://) used to download uploaded/local/cloud task images."),
    ("LABEL_STUDIO_API_KEY", "label_studio_api_key", None, "Label Studio access token used with `LABEL_STUDIO_URL`."),
    ("BASIC_AUTH_USER", "basic_auth_user", None, "HTTP Basic auth user required on every route (set with `BASIC_AUTH_PASS`)."),
    ("BASIC_AUTH_PASS", "basic_auth_pass", None, "HTTP Basic auth password."),
    ("LOG_LEVEL", "log_level", "INFO", "Python log level."),
    ("PORT", "port", "9090", "Port `make run` serves on."),
    ("WORKERS", "workers", "1", "gunicorn worker processes (each holds its own model copy)."),
    ("THREADS", "threads", "4", "gunicorn threads per worker (model calls are serialised per process)."),
    ("SEGAGENT_MAX_IMAGE_PIXELS", "max_image_pixels", "50000000", "Largest image (width x height) accepted; larger ones get a clear error."),
    ("SEGAGENT_MEDIA_TIMEOUT", "media_timeout", "30", "Seconds to wait for a task image download before answering with an error."),
    ("SEGAGENT_CACHE_MB", "cache_mb", "1024", "Byte budget of the per-image embedding cache (LRU, keyed by image content)."),
    ("SEGAGENT_GRABCUT_MAX_SIDE", "grabcut_max_side", "512", "GrabCut works on the image scaled to this longest side (speed); masks come back at full size."),
    ("SEGAGENT_EXPRESSION_FIELD", "expression_field", None, "Task data field holding the referring expression when the label config shows none."),
    ("SEGAGENT_MODEL_VERSION", "model_version", None, "Overrides the reported model version (default: the promoted version of `MODEL_DIR/versions`, else derived from the policy, the segmenter and its weights)."),
    ("SEGAGENT_PRELOAD", "preload", "true", "Load the models in a background thread at start (true) or at the first request (false)."),
)


@dataclass(frozen=True)
class Settings:
    segmenter: str = "grabcut"
    sam_checkpoint: Optional[str] = None
    sam_type: Optional[str] = None
    sam_model: Optional[str] = None
    policy: Optional[str] = None
    policy_kind: str = "hf-vlm"
    coordinates: str = "qwen"
    dtype: str = "auto"
    max_steps: int = 7
    candidates: int = 1
    stop_iou: float = 0.95
    patience: int = 3
    protocol: Optional[str] = None
    temperature: float = 1.0
    refine: bool = False
    device: str = "auto"
    model_dir: Path = Path("./models")
    redis_url: Optional[str] = None
    queue_prefix: str = "segagent"
    predict_deadline: int = 90
    interactive_deadline: int = 20
    batch_chunk: int = 4
    job_timeout: int = 600
    job_retries: int = 2
    transient_retries: int = 2
    retry_backoff: float = 0.5
    worker_heartbeat: int = 10
    redis_timeout: float = 2.0
    preannotate_on_create: bool = False
    train_every: int = 50
    train_method: str = "lora"
    train_epochs: int = 2
    train_lr: float = 1e-4
    train_batch: int = 4
    train_stop_samples: bool = False
    train_save_steps: int = 200
    star_rounds: int = 0
    holdout: float = 0.2
    force_promote: bool = False
    train_timeout: int = 21600
    label_studio_url: Optional[str] = None
    label_studio_api_key: Optional[str] = None
    basic_auth_user: Optional[str] = None
    basic_auth_pass: Optional[str] = None
    log_level: str = "INFO"
    port: int = 9090
    workers: int = 1
    threads: int = 4
    max_image_pixels: int = 50_000_000
    media_timeout: int = 30
    cache_mb: int = 1024
    grabcut_max_side: int = 512
    expression_field: Optional[str] = None
    model_version: Optional[str] = None
    preload: bool = True

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every variable of ``FIELDS`` from ``env`` (default ``os.environ``) and validate."""
        env = os.environ if env is None else env
        # a variable set but left empty (a blank line of .env, compose's ${VAR:-}) means its default
        raw = {attr: _blank_to_none(env.get(var)) or default for var, attr, default, _ in FIELDS}
        types = {f.name: f.type for f in fields(cls)}
        values = {attr: _convert(_var_of(attr), value, types[attr]) for attr, value in raw.items()}
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes) -> "Settings":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        settings = type(self)(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        def fail(attr: str, why: str) -> None:
            raise SettingsError(f"{_var_of(attr)}={getattr(self, attr)!r}: {why}")

        if self.segmenter not in SEGMENTERS:
            fail("segmenter", f"must be one of {', '.join(SEGMENTERS)}")
        if self.segmenter == "sam" and not self.sam_checkpoint:
            raise SettingsError("SEGAGENT_SEGMENTER=sam needs SEGAGENT_SAM_CHECKPOINT (a segment-anything .pth file)")
        if self.segmenter == "hf-sam" and not self.sam_model:
            raise SettingsError("SEGAGENT_SEGMENTER=hf-sam needs SEGAGENT_SAM_MODEL (hub id or model folder)")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            fail("protocol", f"must be one of {', '.join(PROTOCOLS)}")
        for attr, allowed in (("policy_kind", POLICY_KINDS), ("coordinates", COORDINATES), ("dtype", DTYPES)):
            if getattr(self, attr) not in allowed:
                fail(attr, f"must be one of {', '.join(allowed)}")
        if not 0.0 < self.stop_iou <= 1.0:
            fail("stop_iou", "must be in (0, 1]")
        if self.train_method not in TRAIN_METHODS:
            fail("train_method", f"must be one of {', '.join(TRAIN_METHODS)}")
        if not 0.0 < self.holdout < 1.0:
            fail("holdout", "must be between 0 and 1")
        if self.train_lr <= 0:
            fail("train_lr", "must be > 0")
        if self.temperature <= 0:
            fail("temperature", "must be > 0")
        if self.sam_type is not None and self.sam_type not in SAM_TYPES:
            fail("sam_type", f"must be one of {', '.join(SAM_TYPES)}")
        if not (self.device in ("auto", "cpu", "cuda") or _is_cuda_index(self.device)):
            fail("device", "must be auto, cpu, cuda or cuda:N")
        if self.redis_url is not None and urlparse(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            fail("redis_url", "must be a redis://, rediss:// or unix:// URL")
        if self.label_studio_url is not None and urlparse(self.label_studio_url).scheme not in ("http", "https"):
            fail("label_studio_url", "must start with http:// or https://")
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        if self.log_level.upper() not in LOG_LEVELS:
            fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        for attr, low in (("port", 1), ("workers", 1), ("threads", 1), ("max_image_pixels", 1),
                          ("cache_mb", 0), ("grabcut_max_side", 64), ("media_timeout", 1),
                          ("max_steps", 0), ("candidates", 1), ("patience", 1), ("predict_deadline", 1),
                          ("interactive_deadline", 1), ("batch_chunk", 1), ("job_timeout", 1), ("job_retries", 0),
                          ("transient_retries", 0), ("retry_backoff", 0), ("worker_heartbeat", 1),
                          ("redis_timeout", 0.1), ("train_every", 0), ("train_epochs", 1), ("train_batch", 1), ("train_save_steps", 1),
                          ("star_rounds", 0), ("train_timeout", 1)):
            if getattr(self, attr) < low:
                fail(attr, f"must be >= {low}")
        if not self.queue_prefix.replace("-", "").replace("_", "").isalnum():
            fail("queue_prefix", "must hold only letters, digits, - and _")
        if self.port > 65535:
            fail("port", "must be <= 65535")

    def loop_config(self):
        """The episode loop's settings (one place builds them for every caller)."""
        from .agent.loop import LoopConfig

        protocol = self.protocol or ("release" if self.policy_kind == "qwen-vl-chat" else "extended")
        return LoopConfig(self.max_steps, self.candidates, self.stop_iou, self.patience, protocol)

    @property
    def release_protocol(self) -> bool:
        return self.loop_config().release

    @property
    def cache_bytes(self) -> int:
        return self.cache_mb * 2**20

    @property
    def media_cache_dir(self) -> Path:
        return self.model_dir / "cache" / "media"


def _var_of(attr: str) -> str:
    return next(var for var, a, _, _ in FIELDS if a == attr)


def _blank_to_none(value: Optional[str]) -> Optional[str]:
    return None if value is None or value.strip() == "" else value.strip()


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


def _convert(var: str, value: Optional[str], annotation: str):
    if value is None:
        return None
    try:
        if annotation == "int":
            return int(value)
        if annotation == "float":
            return float(value)
        if annotation == "bool":
            lowered = value.lower()
            if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError("expected true or false")
            return lowered in ("1", "true", "yes", "on")
        if annotation == "Path":
            return Path(value)
    except ValueError as exc:
        raise SettingsError(f"{var}={value!r}: {exc}") from None
    return value


def settings_table() -> str:
    """The README's settings table, in Markdown."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{var}` | {f'`{d}`' if d else '-'} | {text} |" for var, _, d, text in FIELDS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
