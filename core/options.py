"""Command-line options derived from Settings, and the one place a command builds its Settings.

A settings option defaults to None (not given): the STREAMREC_* env var applies, else the field's
default, both named in its help; `command_settings` reads the env once, lays the given options over
it and exits with a clear error if the result is invalid. Commands pass the Settings down.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import typer

from core.errors import ConfigError
from core.settings import Settings, default_of, env_name, load_settings


def setting_option(path: str, *flags: str, help: str = "") -> Any:
    """A typer option for the setting at `path` ("kafka.broker"); flags default to typer's (--broker)."""
    default = default_of(path)
    where = f"${env_name(path)}" + (f", else {default}" if default is not None else "")
    # parentheses: typer's rich help would take "[default: ...]" for markup and drop it
    return typer.Option(None, *flags, help=f"{help} (default: {where})".lstrip(), show_default=False)


def command_settings(flags: Mapping[str, Any] | None = None) -> Settings:
    """`load_settings(flags)`, or exit 1 saying what is wrong (an old STREAMREC_* name, a bad value)."""
    try:
        return load_settings(flags)
    except ConfigError as e:
        sys.exit(f"error: {e}")
