"""How a settings field is declared and read: its variable, its default as written in the environment, its
meaning, and the conversion of the text by the field's type (``settings.Settings`` is the one user)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


class SettingsError(ValueError):
    """A setting has a value the service cannot start with."""


def blank_to_none(value: Optional[str]) -> Optional[str]:
    return None if value is None or value.strip() == "" else value.strip()


def convert(var: str, value: Optional[str], annotation: str):
    if value is None:
        return None
    try:
        if annotation == "int":
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError("must be a whole number (e.g. 4)") from None
        if annotation == "float":
            try:
                return float(value.strip())
            except ValueError:
                raise ValueError("must be a number (e.g. 0.5)") from None
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


def setting(env: str, default: Optional[str], meaning: str) -> Any:
    """One variable: its name in the environment, its default as written there (None: unset) and its
    meaning (the README row). ``declared`` turns the default into a value of the field's type."""
    return field(default=default, metadata={"env": env, "default": default, "help": meaning})


def declared(cls):
    """The frozen dataclass of ``cls``, each field's default converted by the field's annotation."""
    for name, annotation in cls.__annotations__.items():  # strings: ``from __future__ import annotations``
        meta = getattr(cls.__dict__.get(name), "metadata", {})
        if "env" not in meta:
            raise TypeError(f"Settings.{name} must be declared with setting(variable, default, meaning)")
        setattr(cls, name, field(default=convert(meta["env"], meta["default"], annotation), metadata=meta))
    return dataclass(frozen=True)(cls)
