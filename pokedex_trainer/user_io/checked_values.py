"""Values read back from files checked before use: whole numbers, class lists, and the
description a PyTorch checkpoint (``.pth``) carries (runs/checked_files.py checks whole run
files with these; backends/torch reads a checkpoint with them before it builds a network)."""

from __future__ import annotations

import math

from pokedex_trainer.user_io.inert_text import class_name


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_whole(value, low: int = 0, high: int | None = None) -> bool:
    """A JSON whole number (not a bool, not 2.0) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and \
        (high is None or value <= high)


def is_number(value, finite: bool = True) -> bool:
    """A JSON number (int or float, not a bool); finite unless ``finite`` is False."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (not finite or math.isfinite(value))


def names_problem(names) -> str | None:
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n.strip()
                                                     for n in names)):
        return "must be a list of class names (non-empty strings)"
    if len({class_name(n) for n in names}) != len(names):
        return "holds the same class name twice"
    return None


def checkpoint_problem(payload: dict) -> str | None:
    """What is wrong with a ``.pth`` checkpoint's own description, or None."""
    problem = names_problem(payload.get("class_names"))
    if problem:
        return f"class_names {problem}"
    size = payload.get("image_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and
            all(is_whole(v, 1) and v <= 4096 for v in size)):
        return (f"image_size must be [height, width], whole numbers from 1 to 4096 (the "
                f"sidecars' bound), got {shown(size)}")
    for key in ("model_type", "arch"):
        if not isinstance(payload.get(key), str):
            return f"{key} must be text, got {shown(payload.get(key))}"
    dropout = payload.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or \
            not 0 <= dropout < 1:
        return f"dropout must be a number from 0 to below 1, got {shown(dropout)}"
    return None
