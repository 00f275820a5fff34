"""Path options checked before any work.

A folder option that names a file (or a folder under a file), or a name longer than the file
system allows, would otherwise end as an OSError deep in the work, after minutes of it, with
exit code 1. Checked first, it is one line and exit code 2. Nothing is created here.
"""

from __future__ import annotations

import os
from pathlib import Path

from pokedex_trainer.errors import UserError

_NAME_MAX, _PATH_MAX = 255, 4096  # where the system cannot say (Windows: 255 per name)


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _limit(folder: Path, name: str, fallback: int) -> int:
    try:
        return os.pathconf(folder if folder.is_dir() else folder.parent, name)
    except (AttributeError, OSError, ValueError):  # Windows, or a system that will not say
        return fallback


def _length_problem(path: Path, existing: Path) -> str | None:
    name_max = _limit(existing, "PC_NAME_MAX", _NAME_MAX)
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            shown = part if len(part) <= 40 else part[:37] + "..."
            return (f"the name '{shown}' is {len(os.fsencode(part))} bytes long, more than the "
                    f"{name_max} this file system allows")
    path_max = _limit(existing, "PC_PATH_MAX", _PATH_MAX)
    if len(os.fsencode(os.path.abspath(path))) >= path_max:
        return f"the path is longer than the {path_max} bytes this system allows"
    return None


def folder_problem(path) -> str | None:
    """Why ``path`` cannot be (or become) a folder: a file stands at it or above it, or a
    name is too long for the file system; None when it can."""
    path = Path(path)
    existing = _nearest_existing(path)
    problem = _length_problem(path, existing)
    if problem is None and existing != Path(".") and not existing.is_dir():
        problem = "it is a file, not a folder" if existing == path else \
            f"'{existing}' is a file, not a folder"
    return problem


def check_folder_option(path, option: str) -> None:
    """Raise one line (UserError) when ``path``, the value of ``option``, cannot be a
    folder."""
    problem = folder_problem(path)
    if problem:
        if problem == "it is a file, not a folder":
            raise UserError(f"{option} '{path}' is a file, not a folder")
        raise UserError(f"{option} '{path}': {problem}")


def check_file_option(path, option: str) -> None:
    """Raise one line (UserError) when ``path``, the value of ``option``, cannot be a file:
    it is a folder, its folder cannot be one, or a name is too long."""
    path = Path(path)
    problem = _length_problem(path, _nearest_existing(path)) or folder_problem(path.parent)
    if problem:
        raise UserError(f"{option} '{path}': {problem}")
    if path.is_dir():
        raise UserError(f"{option} '{path}' is a folder; name a file")


def check_train_paths(config) -> None:
    """The folders a new run of ``config`` (a TrainConfig) makes, checked before any work,
    in the words the run itself would use when it met the problem later."""
    folders = [(config.output_dir, "cannot write to output directory '{}': {}"),
               (config.log_dir, "cannot write to TensorBoard log directory '{}': {}")]
    if config.cache == "disk" and config.cache_dir:
        folders.append((config.cache_dir, "--cache disk cannot use '{}': {}; choose a "
                                          "writable folder with --cache_dir"))
    if config.run_name:
        folders += [(Path(folder) / config.run_name, "--run_name: cannot make '{}': {}")
                    for folder in (config.output_dir, config.log_dir)]
    for folder, message in folders:
        problem = folder_problem(folder)
        if problem:
            raise UserError(message.format(folder, problem))


WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}


def check_single_component(name: str, what: str) -> str:
    """``name`` as one file or folder name, valid on Windows too; raises UserError otherwise.

    A class or run name must never reach outside its parent folder (``..``, ``a/b``, an
    absolute path) or be a name Windows cannot create (``CON``, ``a:b``, a trailing dot).
    """
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "it is empty"
    elif name in (".", "..") or any(sep in name for sep in ("/", "\\")):
        problem = "it must be a single folder name, without '/', '\\' or '..'"
    elif any(ch in name for ch in ':*?"<>|') or any(ord(ch) < 32 for ch in name):
        problem = 'it holds a character Windows forbids in names (: * ? " < > | or a control one)'
    elif name.rstrip(" .") != name:
        problem = "it ends with a dot or a space"
    elif name.split(".")[0].upper() in WINDOWS_RESERVED:
        problem = "it is a name Windows reserves"
    if problem:
        raise UserError(f"{what} '{name}' is not usable: {problem}")
    return name
