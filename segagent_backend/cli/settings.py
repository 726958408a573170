"""``segagent settings``: the environment checked, then the settings table."""
from __future__ import annotations

import argparse

from ..settings import Settings, settings_table


def register(sub) -> None:
    """``segagent settings``."""
    p = sub.add_parser("settings", help="check the environment, then print the settings table (Markdown)")
    p.set_defaults(run=cmd_settings)


def cmd_settings(args: argparse.Namespace) -> int:
    """The settings table; the environment is checked first, so a bad value is reported, not printed."""
    Settings.from_env()
    print(settings_table())
    return 0
