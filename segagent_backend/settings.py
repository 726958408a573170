"""The one settings object, read from the environment in one place.

Each variable is declared once, as a field of ``Settings``: its type (the annotation), its name in the
environment, its default (written as it would be in the environment) and its meaning. ``from_env``
converts by the field's type, the README table is made from the same fields (``python -m
segagent_backend.settings`` prints it) and ``FIELDS`` lists them as (variable, attribute, default,
meaning). A bad value fails at start with a ``SettingsError`` that names the variable.

The named choices (tools, policy kinds, coordinate conventions, protocols, decodings) are the agent's tables:
their names are validated against them and their README rows are made from them, so none is listed here.
"""
from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlparse

# the tables only: no builder runs and no torch is imported by reading them
from .agent.choices import described, described_defaults
from .agent.loop import PROTOCOLS, LoopConfig
from .agent.policies import DECODINGS, POLICIES
from .agent.protocol import CONVENTIONS
from .agent.segmenters import SEGMENTERS
from .environment import SettingsError, blank_to_none, convert, declared, setting

DTYPES = ("auto", "bfloat16", "float16", "float32")
SAM_TYPES = ("vit_b", "vit_l", "vit_h")
TRAIN_METHODS = ("lora", "full")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


@declared
class Settings:
    segmenter: str = setting(
        "SEGAGENT_SEGMENTER", "grabcut",
        f"Interactive tool: {described(SEGMENTERS)}.")
    sam_checkpoint: Optional[str] = setting(
        "SEGAGENT_SAM_CHECKPOINT", None,
        "Path of a segment-anything `.pth` checkpoint (required with `sam`).")
    sam_type: Optional[str] = setting(
        "SEGAGENT_SAM_TYPE", None,
        "`vit_b`, `vit_l` or `vit_h`: checked against the checkpoint (optional; inferred when unset).")
    sam_model: Optional[str] = setting(
        "SEGAGENT_SAM_MODEL", None,
        "Hub id or local folder of a transformers SAM-family model (required with `hf-sam`); its `config.model_type` picks the class: `sam`, `sam_hq`, `sam2`, `sam3_tracker` or `edgetam` (EdgeTAM needs timm and torchvision).")
    simpleclick_checkpoint: Optional[str] = setting(
        "SEGAGENT_SIMPLECLICK_CHECKPOINT", None,
        "Path of a SimpleClick plain-ViT `.pth` (required with `simpleclick`): the published `cocolvis_vit_{base,large,huge}.pth` as they are (read without running their pickled code); run as the SegAgent release does (NoBRS, zoom-in to 448, flip, threshold 0.49).")
    policy: Optional[str] = setting(
        "SEGAGENT_POLICY", None,
        "Hub id or folder of the SegAgent policy (a multimodal LLM); unset = interactive tools only.")
    text_model: Optional[str] = setting(
        "SEGAGENT_TEXT_MODEL", None,
        "Hub id or folder of a SAM 3 text model (`Sam3Model`, e.g. `facebook/sam3`): automatic predictions start from its best instance of the expression's noun phrase; without `SEGAGENT_POLICY` that mask is the prediction.")
    text_threshold: float = setting(
        "SEGAGENT_TEXT_THRESHOLD", "0.5",
        "SAM 3 score (0..1) an instance must exceed to be a start; none above it: the task gets a 422 error (without a policy) or starts empty.")
    policy_kind: str = setting(
        "SEGAGENT_POLICY_KIND", "hf-vlm",
        f"{described(POLICIES)}.")
    coordinates: str = setting(
        "SEGAGENT_COORDINATES", "qwen",
        f"How the policy writes clicks: {described(CONVENTIONS)}.")
    dtype: str = setting(
        "SEGAGENT_DTYPE", "auto",
        "Policy weights: `auto` (bf16 on GPU, fp32 on CPU), `bfloat16`, `float16`, `float32`.")
    max_steps: int = setting(
        "SEGAGENT_MAX_STEPS", "7",
        "Policy clicks per episode at most (7 for referring segmentation, 11 for high-quality masks).")
    candidates: int = setting(
        "SEGAGENT_CANDIDATES", "1",
        "Clicks sampled per step for tree search (1 = greedy).")
    stop_iou: float = setting(
        "SEGAGENT_STOP_IOU", "0.95",
        "Stop once the policy's own IoU estimate of the mask reaches this.")
    patience: int = setting(
        "SEGAGENT_PATIENCE", "3",
        "Stop after this many steps without a better estimate.")
    protocol: Optional[str] = setting(
        "SEGAGENT_PROTOCOL", None,
        f"{described(PROTOCOLS)}. Default: " + described_defaults(POLICIES, "protocol") + ".")
    decoding: Optional[str] = setting(
        "SEGAGENT_DECODING", None,
        f"How the policy writes its answers: {described(DECODINGS)}. Default: "
        + described_defaults(PROTOCOLS, "decoding", "under the `{}` protocol") + ".")
    temperature: float = setting(
        "SEGAGENT_TEMPERATURE", "1.0",
        "Sampling temperature of tree-search candidates.")
    refine: bool = setting(
        "SEGAGENT_REFINE", "false",
        "Interactive calls: let the policy continue from the annotator's clicks (true) or only follow them (false).")
    device: str = setting(
        "DEVICE", "auto",
        "`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.")
    model_dir: Path = setting(
        "MODEL_DIR", "./models",
        "Working directory for models, versions and the media download cache (`MODEL_DIR/cache/media`).")
    redis_url: Optional[str] = setting(
        "REDIS_URL", None,
        "Redis for the job queues: set, the web process loads no model and `segagent worker` processes run the jobs; unset = every job runs in-process (embedded mode).")
    queue_prefix: str = setting(
        "SEGAGENT_QUEUE_PREFIX", "segagent",
        "Name prefix of the queues (`<prefix>-interactive`, `-batch`, `-train`) and of the worker health keys: one prefix per deployment sharing a Redis.")
    predict_deadline: int = setting(
        "SEGAGENT_PREDICT_DEADLINE", "90",
        "Seconds a batch /predict waits for its jobs (below Label Studio's 100 s); unfinished tasks get a per-task error. Jobs (and embedded mode) start no chunk after it.")
    interactive_deadline: int = setting(
        "SEGAGENT_INTERACTIVE_DEADLINE", "20",
        "Seconds an interactive /predict (a click) waits for its job before answering with an error. Jobs (and embedded mode) start no task after it, nor once the web process has given up.")
    batch_chunk: int = setting(
        "SEGAGENT_BATCH_CHUNK", "4",
        "Tasks per job: a multi-task /predict (clicks too) fans out as jobs of this many tasks, automatic ones run in lockstep on a worker; embedded mode runs them in chunks of this many.")
    job_timeout: int = setting(
        "SEGAGENT_JOB_TIMEOUT", "600",
        "Seconds a job may run on a worker before it is stopped and counted as failed.")
    job_retries: int = setting(
        "SEGAGENT_JOB_RETRIES", "2",
        "Times a job is re-queued after its worker died mid-job or it crashed (0 = never).")
    transient_retries: int = setting(
        "SEGAGENT_TRANSIENT_RETRIES", "2",
        "Times a worker retries tasks that failed transiently (image host unreachable, CUDA out of memory) within one job.")
    retry_backoff: float = setting(
        "SEGAGENT_RETRY_BACKOFF", "0.5",
        "Seconds before the first transient retry; doubles on each further retry.")
    worker_heartbeat: int = setting(
        "SEGAGENT_WORKER_HEARTBEAT", "10",
        "Seconds between worker heartbeats; a running job whose worker missed two heartbeats is re-queued.")
    redis_timeout: float = setting(
        "SEGAGENT_REDIS_TIMEOUT", "2",
        "Seconds the web process waits for Redis to connect or answer before it reports Redis unreachable.")
    preannotate_on_create: bool = setting(
        "SEGAGENT_PREANNOTATE_ON_CREATE", "false",
        "A `TASKS_CREATED` webhook queues pre-annotation of the new tasks (needs `REDIS_URL`, `LABEL_STUDIO_URL` and `LABEL_STUDIO_API_KEY`).")
    train_every: int = setting(
        "SEGAGENT_TRAIN_EVERY", "50",
        "Queue a training round after this many new corrections of a project (annotations submitted or updated); 0 = only on Start Training.")
    corrections_max_mb: int = setting(
        "SEGAGENT_CORRECTIONS_MAX_MB", "1024",
        "Byte quota of the recorded corrections (`MODEL_DIR/corrections`) in MB: an annotation webhook that would pass it records nothing and is answered 507 (and logged).")
    max_webhook_annotations: int = setting(
        "SEGAGENT_MAX_WEBHOOK_ANNOTATIONS", "1000",
        "Annotations per webhook event at most (a larger bulk event: 413, nothing recorded; Start Training pulls a whole project).")
    train_method: str = setting(
        "SEGAGENT_TRAIN_METHOD", "lora",
        "`lora` (peft adapters on the language model, merged into the saved version) or `full` fine-tuning (the vision tower stays frozen either way).")
    train_epochs: int = setting(
        "SEGAGENT_TRAIN_EPOCHS", "2",
        "Epochs over a round's samples.")
    train_lr: float = setting(
        "SEGAGENT_TRAIN_LR", "0.0001",
        "Peak learning rate (cosine schedule).")
    train_batch: int = setting(
        "SEGAGENT_TRAIN_BATCH", "4",
        "Samples per training step.")
    train_stop_samples: bool = setting(
        "SEGAGENT_TRAIN_STOP_SAMPLES", "false",
        "Add one stop sample per trajectory (the final mask with the estimate alone) so the policy learns to stop; off = the release's SFT data.")
    train_save_steps: int = setting(
        "SEGAGENT_TRAIN_SAVE_STEPS", "200",
        "Optimizer steps between training checkpoints: a round whose worker dies resumes from the last one.")
    star_rounds: int = setting(
        "SEGAGENT_STAR_ROUNDS", "0",
        "StaR+ rounds after SFT: roll the policy out on the training images, keep its good clicks, replace the others with the simulator's, train again.")
    holdout: float = setting(
        "SEGAGENT_HOLDOUT", "0.2",
        "Fraction of a round's annotated tasks held out to compare the candidate with the serving policy (at least one).")
    force_promote: bool = setting(
        "SEGAGENT_FORCE_PROMOTE", "false",
        "Promote every trained candidate, even when it scores worse than the serving policy on the held-out tasks.")
    train_timeout: int = setting(
        "SEGAGENT_TRAIN_TIMEOUT", "21600",
        "Seconds a training round may run on a worker before it is stopped (a retried round resumes from its checkpoints).")
    label_studio_url: Optional[str] = setting(
        "LABEL_STUDIO_URL", None,
        "Label Studio base URL (http:// or https://) used to download uploaded/local/cloud task images.")
    label_studio_api_key: Optional[str] = setting(
        "LABEL_STUDIO_API_KEY", None,
        "Label Studio access token used with `LABEL_STUDIO_URL`.")
    basic_auth_user: Optional[str] = setting(
        "BASIC_AUTH_USER", None,
        "HTTP Basic auth user required on every route (set with `BASIC_AUTH_PASS`).")
    basic_auth_pass: Optional[str] = setting(
        "BASIC_AUTH_PASS", None,
        "HTTP Basic auth password.")
    log_level: str = setting(
        "LOG_LEVEL", "INFO",
        "Python log level.")
    port: int = setting(
        "PORT", "9090",
        "Port `make run` serves on.")
    workers: int = setting(
        "WORKERS", "1",
        "gunicorn worker processes (each holds its own model copy).")
    threads: int = setting(
        "THREADS", "8",
        "Requests per gunicorn worker that may use the model or download at once (they take turns at the model); one more is answered 503 busy with Retry-After. `segagent serve` adds 2 threads kept free for /health and /metrics.")
    max_image_pixels: int = setting(
        "SEGAGENT_MAX_IMAGE_PIXELS", "50000000",
        "Largest image (width x height) accepted; larger ones get a clear error.")
    media_timeout: int = setting(
        "SEGAGENT_MEDIA_TIMEOUT", "30",
        "Seconds to wait for a task image download before answering with an error.")
    cache_mb: int = setting(
        "SEGAGENT_CACHE_MB", "1024",
        "Byte budget of the per-image embedding cache (LRU, keyed by image content).")
    grabcut_max_side: int = setting(
        "SEGAGENT_GRABCUT_MAX_SIDE", "512",
        "GrabCut works on the image scaled to this longest side (speed); masks come back at full size.")
    expression_field: Optional[str] = setting(
        "SEGAGENT_EXPRESSION_FIELD", None,
        "Task data field holding the referring expression when the label config shows none.")
    model_version: Optional[str] = setting(
        "SEGAGENT_MODEL_VERSION", None,
        "Overrides the reported model version (default: the promoted version of `MODEL_DIR/versions`, else derived from the policy, the segmenter and its weights).")
    media_allow_hosts: str = setting(
        "SEGAGENT_MEDIA_ALLOW_HOSTS", "",
        "Comma-separated hosts (`host` or `host:port`) whose http(s) task URLs may be fetched, beside Label Studio's own host; `*` = any public host.")
    media_allow_private: bool = setting(
        "SEGAGENT_MEDIA_ALLOW_PRIVATE", "false",
        "Fetch allowed task URLs even when they resolve to private, loopback, link-local or cloud-metadata addresses (Label Studio's own host always may).")
    media_max_mb: int = setting(
        "SEGAGENT_MEDIA_MAX_MB", "64",
        "Largest task image download in MB; a larger one stops with an error.")
    media_cache_mb: int = setting(
        "SEGAGENT_MEDIA_CACHE_MB", "2048",
        "Byte budget of the media download cache (`MODEL_DIR/cache/media`) in MB; past it the least recently used downloads are deleted.")
    local_files_root: Optional[Path] = setting(
        "LOCAL_FILES_DOCUMENT_ROOT", None,
        "Label Studio's local-files document root, when this backend can read it directly; files outside it (symlinks resolved) are refused.")
    trust_setup: bool = setting(
        "SEGAGENT_TRUST_SETUP", "false",
        "Let `/setup` name a project's Label Studio host and token (used only when `LABEL_STUDIO_URL` is unset); off, media and tokens go only where the settings say.")
    max_body_mb: int = setting(
        "SEGAGENT_MAX_BODY_MB", "32",
        "Largest request body in MB (larger: HTTP 413).")
    max_tasks: int = setting(
        "SEGAGENT_MAX_TASKS", "100",
        "Tasks per /predict call at most.")
    max_clicks: int = setting(
        "SEGAGENT_MAX_CLICKS", "40",
        "Clicks per interactive request at most.")
    max_label_config_kb: int = setting(
        "SEGAGENT_MAX_LABEL_CONFIG_KB", "512",
        "Largest label config accepted, in KB.")
    click_failover: float = setting(
        "SEGAGENT_CLICK_FAILOVER", "2",
        "Seconds without a heartbeat after which the worker of a click counts as dead and the click is re-queued for another worker.")
    preload: bool = setting(
        "SEGAGENT_PRELOAD", "true",
        "Load the models in a background thread at start (true) or at the first request (false).")

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every declared variable from ``env`` (default ``os.environ``) and validate."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            # a variable set but left empty (a blank line of .env, compose's ${VAR:-}) means its default
            raw = blank_to_none(env.get(f.metadata["env"]))
            values[f.name] = f.default if raw is None else convert(f.metadata["env"], raw, f.type)
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
            raise SettingsError(f"{variable_of(attr)}={getattr(self, attr)!r}: {why}")

        for attr, allowed in _CHOICES:  # None: an optional choice left to its default
            if getattr(self, attr) is not None and getattr(self, attr) not in allowed:
                fail(attr, f"must be one of {', '.join(allowed)}")
        tool = SEGMENTERS[self.segmenter]
        if tool.weights and not getattr(self, tool.weights):
            raise SettingsError(f"SEGAGENT_SEGMENTER={self.segmenter} needs {variable_of(tool.weights)} "
                                f"({'a .pth file' if tool.file else 'hub id or model folder'})")
        if not 0.0 <= self.text_threshold < 1.0:
            fail("text_threshold", "must be in [0, 1)")
        if not 0.0 < self.stop_iou <= 1.0:
            fail("stop_iou", "must be in (0, 1]")
        if not 0.0 < self.holdout < 1.0:
            fail("holdout", "must be between 0 and 1")
        if self.train_lr <= 0:
            fail("train_lr", "must be > 0")
        if self.temperature <= 0:
            fail("temperature", "must be > 0")
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
                          ("star_rounds", 0), ("train_timeout", 1), ("media_max_mb", 1), ("max_body_mb", 1),
                          ("media_cache_mb", 1), ("corrections_max_mb", 1), ("max_webhook_annotations", 1),
                          ("max_tasks", 1), ("max_clicks", 1), ("max_label_config_kb", 1), ("click_failover", 0.2)):
            if getattr(self, attr) < low:
                fail(attr, f"must be >= {low}")
        if not self.queue_prefix.replace("-", "").replace("_", "").isalnum():
            fail("queue_prefix", "must hold only letters, digits, - and _")
        if self.port > 65535:
            fail("port", "must be <= 65535")

    def loop_config(self) -> LoopConfig:
        """The episode loop's settings (one place builds them for every caller); the protocol defaults to
        the policy kind's."""
        protocol = self.protocol or POLICIES[self.policy_kind].protocol
        return LoopConfig(self.max_steps, self.candidates, self.stop_iou, self.patience, protocol)

    @property
    def release_protocol(self) -> bool:
        return self.loop_config().release

    @property
    def decoding_mode(self) -> str:
        """SEGAGENT_DECODING, or the protocol's default (``PROTOCOLS``)."""
        return self.decoding or PROTOCOLS[self.loop_config().protocol].decoding

    @property
    def cache_bytes(self) -> int:
        return self.cache_mb * 2**20

    @property
    def media_cache_dir(self) -> Path:
        return self.model_dir / "cache" / "media"


# (environment variable, attribute, default as written in the environment, meaning), made from Settings
FIELDS: tuple[tuple[str, str, Optional[str], str], ...] = tuple(
    (f.metadata["env"], f.name, f.metadata["default"], f.metadata["help"]) for f in fields(Settings))
_VARIABLES = {attr: var for var, attr, _, _ in FIELDS}
# (attribute, its valid names): the agent's tables, and the few plain lists that are the settings' own
_CHOICES = (("segmenter", SEGMENTERS), ("policy_kind", POLICIES), ("coordinates", CONVENTIONS),
            ("protocol", PROTOCOLS), ("decoding", DECODINGS), ("dtype", DTYPES), ("sam_type", SAM_TYPES),
            ("train_method", TRAIN_METHODS))


def variable_of(attr: str) -> str:
    """The environment variable of the settings attribute ``attr`` (``sam_model`` -> ``SEGAGENT_SAM_MODEL``)."""
    return _VARIABLES[attr]


def settings_table() -> str:
    """The README's settings table, in Markdown."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{var}` | {f'`{d}`' if d else '-'} | {text} |" for var, _, d, text in FIELDS]
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
