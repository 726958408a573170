"""The engine's parts as the settings name them, each built in exactly ONE place for every caller (web
process, worker, training round, CLI): the interactive tool, the SAM 3 text model, the policy, the episode loop's and the
fine-tuning's configs, the click convention, the media loader."""
from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, Optional

from .media import MediaLoader, MediaPolicy, MediaSource
from .settings import Settings

if TYPE_CHECKING:
    from trainer.finetune import FinetuneConfig

    from .agent.loop import LoopConfig
    from .agent.grounding import TextGrounder
    from .agent.policies import Policy, PolicySpec
    from .agent.protocol import CoordinateConvention
    from .agent.segmenters import EmbeddingCache, Segmenter, ToolOptions


def segmenter_from_settings(settings: Settings, cache: Optional["EmbeddingCache"] = None) -> "Segmenter":
    """The interactive tool the settings name, loaded as every service process loads it."""
    from .agent.segmenters import SEGMENTERS, EmbeddingCache

    cache = cache if cache is not None else EmbeddingCache(settings.cache_bytes)
    return SEGMENTERS[settings.segmenter].build(tool_options(settings), cache)


def tool_options(settings: Settings) -> "ToolOptions":
    """What the tools are built from: the settings' fields of the same names."""
    from .agent.segmenters import ToolOptions

    return ToolOptions(**{f.name: getattr(settings, f.name) for f in fields(ToolOptions)})


def text_model_from_settings(settings: Settings, cache: Optional["EmbeddingCache"] = None) -> Optional["TextGrounder"]:
    """SAM 3's text model (SEGAGENT_TEXT_MODEL) on the settings' device, its image features kept in
    ``cache``; None when unset."""
    if not settings.text_model:
        return None
    from .agent.grounding import TextGrounder

    return TextGrounder.from_pretrained(settings.text_model, settings.device, cache)


def policy_from_settings(settings: Settings, checkpoint: str) -> "Policy":
    """The policy of kind SEGAGENT_POLICY_KIND from ``checkpoint`` (a folder or hub id), as ``policy_spec`` says."""
    from .agent.policies import load_policy

    return load_policy(policy_spec(settings, checkpoint))


def policy_spec(settings: Settings, checkpoint: Optional[str] = None) -> "PolicySpec":
    """How every policy of this deployment loads and runs (kind, coordinates, device, dtype, temperature,
    decoding), from ``checkpoint`` (default: SEGAGENT_POLICY)."""
    from .agent.policies import PolicySpec

    return PolicySpec(settings.policy_kind, str(checkpoint or settings.policy or ""), convention(settings),
                      settings.device, settings.dtype, settings.temperature, settings.decoding_mode)


def loop_config(settings: Settings) -> "LoopConfig":
    """The episode loop's settings (``Settings.loop_config``)."""
    return settings.loop_config()


def convention(settings: Settings) -> "CoordinateConvention":
    """How the policy writes clicks (SEGAGENT_COORDINATES)."""
    from .agent.protocol import CONVENTIONS

    return CONVENTIONS[settings.coordinates]


def finetune_config(settings: Settings, **overrides: Any) -> "FinetuneConfig":
    """Fine-tuning as the SEGAGENT_TRAIN_* settings say; ``overrides`` that are not None win (CLI options)."""
    from trainer.finetune import FinetuneConfig

    values = dict(method=settings.train_method, epochs=settings.train_epochs, learning_rate=settings.train_lr,
                  batch_size=settings.train_batch, save_steps=settings.train_save_steps, device=settings.device)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return FinetuneConfig(**values)


def media_loader(settings: Settings) -> MediaLoader:
    """Task images under the media policy of the settings (Label Studio's host, SEGAGENT_MEDIA_ALLOW_HOSTS,
    ...), fetched from LABEL_STUDIO_URL (when set) and cached under MODEL_DIR/cache/media (at most
    SEGAGENT_MEDIA_CACHE_MB, least recently used first out)."""
    return MediaLoader(settings.media_cache_dir, settings.max_image_pixels, settings.media_timeout,
                       MediaSource(settings.label_studio_url, settings.label_studio_api_key),
                       MediaPolicy.from_settings(settings), cache_bytes=settings.media_cache_mb * 2**20)
