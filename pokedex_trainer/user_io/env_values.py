"""Numbers users set in the environment (time limits): read once, refused in one line."""

from __future__ import annotations

import math
import os
from pathlib import Path

from pokedex_trainer.errors import UserError


def env_seconds(name: str, default: float, zero_allowed: bool = False) -> float:
    """Seconds from the environment variable ``name`` (``default`` when unset or empty);
    UserError for anything but a finite number above 0 (or 0 itself, ``zero_allowed``)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value >= 0 if zero_allowed else value > 0)):
        least = "0 or more" if zero_allowed else "above 0"
        raise UserError(f"{name} must be a number of seconds ({least}), not '{text}'")
    return value


def env_path(name: str) -> Path | None:
    """A path from the environment variable ``name`` (None when unset or empty); UserError for
    one holding a variable the shell did not expand (``${HOME}/x``, ``%APPDATA%\\x``), which
    would otherwise become a folder literally named so."""
    import re

    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if "${" in text or "$(" in text or re.search(r"%[A-Za-z_][A-Za-z0-9_]*%", text):
        raise UserError(f"{name}={text!r} holds a variable that was not expanded: give the "
                        "path itself, or let your shell expand it")
    return Path(text)
