"""Model names given to the CLI (``SEGAGENT_POLICY``, ``SEGAGENT_SAM_MODEL``, ``SEGAGENT_TEXT_MODEL``,
``--base``), checked in one line and fast before anything loads: a missing local folder, an invalid or
unknown hub id, a hub that cannot be reached (transformers would retry for about 30 s, then print two
tracebacks)."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional

from ..agent.loading import is_local_path, weights_problem
from ..model_paths import check_model_paths, model_names, tool_weights
from ..settings import Settings
from .errors import UsageError

HUB_TIMEOUT = 10.0  # seconds for the one request asking the hub whether a model exists
_TRUE = ("1", "on", "yes", "true")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def check_checkpoint(name: Optional[str], what: str) -> None:
    """Raise UsageError naming ``what`` (e.g. ``SEGAGENT_POLICY='x'``) unless ``name`` is a local
    folder, a hub model in the local Hugging Face cache, or a model the hub says exists."""
    if not name:
        return
    problem = weights_problem(name)
    if problem:
        raise UsageError(f"{what}: {problem}")
    if is_local_path(name):
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, HfHubHTTPError,
                                        RepositoryNotFoundError)

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        raise UsageError(f"{what}: neither a model folder nor a hub id (ORG/NAME)") from None
    if isinstance(cached, str):  # downloaded before: loads without the network
        return
    if hub_offline():
        raise UsageError(f"{what}: no such model folder, and not in the Hugging Face cache (HF_HUB_OFFLINE is set)")
    from huggingface_hub import model_info

    try:
        model_info(name, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        raise UsageError(f"{what}: a gated hub model: accept its terms on the hub and log in "
                         f"(hf auth login) or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UsageError(f"{what}: no such model folder, and no such model on the Hugging Face hub "
                         f"(or it is private: log in or set HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise UsageError(f"{what}: the Hugging Face hub refused it: {_first_line(exc)}") from None
    except Exception as exc:  # no network, DNS, proxy, TLS: httpx / OSError, whatever the client raises
        raise UsageError(f"{what}: not a local folder, not in the Hugging Face cache, and the hub is unreachable "
                         f"({type(exc).__name__}: {_first_line(exc)}); download it first or give a folder") from None


def check_settings_models(settings: Settings, policy_checkpoint: Optional[str] = None) -> None:
    """The model names of ``settings`` that will load: the tool's weights, SAM 3's text model, and the policy
    when it loads from ``SEGAGENT_POLICY`` (``policy_checkpoint``, default: the setting; a registry folder is not
    checked here)."""
    check_model_paths(settings)  # local paths and checkpoint files: SettingsError
    for model in model_names(settings):  # hub ids
        policy_elsewhere = model.variable == "SEGAGENT_POLICY" and policy_checkpoint not in (None, model.name)
        if not model.file and not policy_elsewhere:
            check_checkpoint(model.name, str(model))


def tool_variable(settings: Settings) -> str:
    """``VAR='value'`` naming where the interactive tool's weights come from."""
    weights = tool_weights(settings)
    return str(weights) if weights else f"SEGAGENT_SEGMENTER={settings.segmenter!r}"


def load_failure(what: str, reason: str) -> UsageError:
    """One line: ``what: cannot load it: reason`` (the reason's first line, exception names kept)."""
    reason = _first_line(reason).removeprefix("the model failed to load: ")
    return UsageError(f"{what}: cannot load it: {reason}")


@contextlib.contextmanager
def quiet_load_errors() -> Iterator[None]:
    """While loading for the CLI: drop the model host's logged tracebacks (the CLI reports the error in
    one line itself); other log records pass."""
    logger = logging.getLogger("segagent_backend.model_host")

    def keep(record: logging.LogRecord) -> bool:
        return record.exc_info is None

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _first_line(value) -> str:
    lines = str(value).strip().splitlines()
    return lines[0] if lines else type(value).__name__


def load_tool(settings: Settings):
    """The interactive tool exactly as a service process loads it (trajectories are made with it; paths
    and hub ids checked first); a weights problem is a UsageError naming the variable."""
    from ..agent.loading import ModelLoadError
    from ..wiring import segmenter_from_settings

    check_settings_models(settings.replace(policy=None))
    try:
        return segmenter_from_settings(settings)
    except ModelLoadError as exc:
        raise load_failure(tool_variable(settings), str(exc)) from None
