"""Named choices (tools, policy kinds, protocols, decodings, click conventions): ONE dict per kind, name ->
entry, that is both the dispatcher and the list of valid names, as segment-anything's ``sam_model_registry``.
Settings validation, ``segagent settings`` and the README table read the same dicts, so a new tool or policy
is one row. Entries carry a ``help`` text; builders import their heavy modules only when called."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, TypeVar


class Described(Protocol):
    @property
    def help(self) -> str: ...


E = TypeVar("E", bound=Described)


@dataclass(frozen=True)
class Choice:
    """An entry that is only a name's meaning (the code that acts on it reads the name)."""

    help: str


def names(table: Mapping[str, Described]) -> str:
    """``a, b, c``: the valid names, in the table's order (for error messages)."""
    return ", ".join(table)


def described(table: Mapping[str, Described]) -> str:
    """```a` (its help), `b` (...) or `c` (...)``: each name with its meaning (for the settings table)."""
    items = [f"`{name}` ({entry.help})" for name, entry in table.items()]
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else "".join(items)


def described_defaults(table: Mapping[str, object], attr: str, where: str = "for `{}`") -> str:
    """```x` for `a`, `y` for `b```: the default each entry gives (its ``attr``: a protocol per policy kind, ...)."""
    return ", ".join(f"`{getattr(entry, attr)}` {where.format(name)}" for name, entry in table.items())


def pick(table: Mapping[str, E], name: str, what: str) -> E:
    """``table[name]``; ValueError naming ``what`` and the valid names when there is no such entry."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}: use {names(table)}") from None
