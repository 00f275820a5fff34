"""prepare_dataset.py's state file, ``.prepare_state.json``: what each output came from and the
SHA-256 of every file the tool wrote.

The file travels with a shared dataset folder, so it is input like any other. Every name in it
must be one ``<Class>/<name>.jpg`` that resolves inside the output folder (no ``..``, absolute
path, drive letter, NUL, nor a link that leaves the folder); entries that fail are ignored with
one warning. A file is removed or replaced only while its bytes still hash to what this tool
recorded writing: an entry without a hash (a state file of an earlier version, or an output
whose writing was interrupted) is never removed, and a file that differs is never replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pokedex_trainer.data.scan import list_class_dirs, list_images
from pokedex_trainer.errors import UserError
from pokedex_trainer.user_io.atomic import atomic_write_json

logger = logging.getLogger(__name__)

STATE_NAME = ".prepare_state.json"
STATE_VERSION = 2  # 2: "written" maps each output to its SHA-256; 1 (no "version"): a list
SHA256 = re.compile(r"^[0-9a-f]{64}$")
OUTPUT_NAME = re.compile(r"^[^/]+_[0-9]{4,}\.jpg$")


@dataclass
class PrepareState:
    """Args:
        settings: the settings of the run that wrote the outputs (None: unknown).
        files: source path -> {"sha256": of the source, "output": name, "output_sha256": ...}.
        written: output name -> SHA-256 of the bytes written (None: not known, never removed).
    """

    settings: dict | None = None
    files: dict[str, dict] = field(default_factory=dict)
    written: dict[str, str | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"version": STATE_VERSION, "settings": self.settings, "files": self.files,
                "written": dict(sorted(self.written.items()))}


def safe_output_path(output_dir: Path, name) -> Path | None:
    """``output_dir/name`` when ``name`` is a name this tool writes (``<Class>/<Class>_NNNN.jpg``)
    and resolves inside ``output_dir``, links included; None otherwise."""
    if not isinstance(name, str) or "\x00" in name or len(name) > 1024:
        return None
    if os.name == "nt" and any(ch in name for ch in ":\\"):  # drive letters, other roots
        return None
    parts = name.split("/")
    if (len(parts) != 2 or parts[0] in ("", ".", "..")
            or not OUTPUT_NAME.match(parts[1]) or parts[1].rpartition("_")[0] != parts[0]):
        return None
    path = output_dir / parts[0] / parts[1]
    try:
        inside = path.resolve().is_relative_to(output_dir.resolve())
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the OS refuses
        return None
    return path if inside else None


def _read_json(path: Path):
    try:
        from pokedex_trainer.user_io.regular_files import read_regular_text

        return json.loads(read_regular_text(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        problem = "it nests too deep" if isinstance(exc, RecursionError) else exc
        raise UserError(f"'{path}' cannot be read ({problem}): it records which files "
                        "prepare_dataset.py wrote there; move it away (the images it lists then "
                        "count as yours and are kept) or choose another --output_dir") from None


def read_state(output_dir: Path, warn: bool = True) -> PrepareState:
    """The state of ``output_dir`` with every entry checked (an empty one when there is none).

    Raises UserError when the file is not a state file at all; single bad entries are dropped
    (with one warning line when ``warn``).
    """
    path = output_dir / STATE_NAME
    data = _read_json(path)
    if data is None:
        return PrepareState()
    settings, files, written = (data.get(k) if isinstance(data, dict) else None
                                for k in ("settings", "files", "written"))
    if (not isinstance(data, dict) or not isinstance(settings, (dict, type(None)))
            or not isinstance(files, (dict, type(None)))
            or not isinstance(written, (dict, list, type(None)))):
        raise UserError(f"'{path}' is not a prepare_dataset.py state file (an object with "
                        "\"settings\", \"files\" and \"written\"): move it away (the images it "
                        "lists then count as yours and are kept) or choose another --output_dir")
    state, ignored = PrepareState(settings=settings), 0
    for source, entry in (files or {}).items():
        if (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and safe_output_path(output_dir, entry.get("output")) is not None
                and _is_hash_or_none(entry.get("output_sha256"))):
            state.files[source] = {k: entry.get(k) for k in ("sha256", "output", "output_sha256")
                                   if entry.get(k) is not None}
        else:
            ignored += 1
    # version 1 listed names only: their hashes are unknown (None), so they are never removed
    listed = written.items() if isinstance(written, dict) else ((n, None) for n in written or ())
    for name, digest in listed:
        if safe_output_path(output_dir, name) is None or not _is_hash_or_none(digest):
            ignored += 1
            continue
        state.written[name] = digest
    for entry in state.files.values():
        if entry.get("output_sha256"):
            state.written[entry["output"]] = entry["output_sha256"]
        else:
            state.written.setdefault(entry["output"], None)
    if ignored and warn:
        logger.warning("%s: ignored %d entries that name a file outside the output folder or "
                       "are not of the expected form (their files are left as they are)",
                       path, ignored)
    return state


def _is_hash_or_none(value) -> bool:
    return value is None or (isinstance(value, str) and SHA256.match(value) is not None)


def earlier_settings(output_dir: Path) -> dict | None:
    """The settings of the earlier run into ``output_dir``, None when unknown or unreadable
    (the run itself reports an unreadable state file)."""
    try:
        return read_state(output_dir, warn=False).settings
    except UserError:
        return None


def write_state(output_dir: Path, state: PrepareState) -> None:
    atomic_write_json(output_dir / STATE_NAME, state.to_json())


def file_sha256(path: Path) -> str | None:
    """SHA-256 of a regular file's bytes (not through a link); None when there is none."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def may_replace(path: Path, recorded: str | None, new_digest: str) -> bool:
    """Whether writing ``new_digest``'s bytes at ``path`` loses nothing: no file there, the file
    this tool recorded writing, or the very same bytes."""
    if not path.exists() and not path.is_symlink():
        return True
    current = file_sha256(path)
    return current is not None and current in (recorded, new_digest)


def remove_stale(output_dir: Path, stale: dict[str, str | None]) -> list[str]:
    """Delete outputs this tool wrote earlier whose source is gone: only names of its record
    whose bytes still hash to what it wrote; any other is kept (and from now on the user's)."""
    removed, kept = [], []
    for name in sorted(stale):
        path = safe_output_path(output_dir, name)
        if path is None or not path.is_file():
            continue
        expected = stale[name]
        if expected is None or file_sha256(path) != expected:
            kept.append(name)
            continue
        path.unlink()
        removed.append(name)
    if kept:
        more = f" and {len(kept) - 1} more" if len(kept) > 1 else ""
        logger.warning("kept %s%s: its source is gone, but it was changed after "
                       "prepare_dataset.py wrote it (or its bytes were never recorded); delete "
                       "it if it is not wanted", kept[0], more)
    return removed


def remove_killed_writes(output_dir: Path, written: dict[str, str | None]) -> None:
    """Temporary files (``.<name>.<random>.tmp``) of outputs whose writing was killed."""
    # mkstemp's names: the prefix, 8 characters of its alphabet, the suffix; and its mode 0600
    # (a finished write is made 0644 before it is renamed): a user's own '.x.notes.tmp' is kept
    pattern = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")
    for class_dir in list_class_dirs(output_dir):
        if safe_output_path(output_dir, f"{class_dir.name}/{class_dir.name}_0000.jpg") is None:
            continue  # a class folder that leads outside the output folder: not ours
        for leftover in class_dir.iterdir():
            match = pattern.match(leftover.name)
            if (match and f"{class_dir.name}/{match.group(1)}" in written
                    and not leftover.is_symlink()
                    and stat.S_IMODE(leftover.lstat().st_mode) == 0o600):
                leftover.unlink(missing_ok=True)


def user_files(output_dir: Path, written) -> set[str]:
    """Images in the output folder that this tool did not write: never touched."""
    found = set()
    for class_dir in list_class_dirs(output_dir):
        for image in list_images(class_dir):
            relative = image.relative_to(output_dir).as_posix()
            if relative not in written:
                found.add(relative)
    return found


def check_output_class_dirs(output_dir: Path, names: list[str]) -> None:
    """Raises UserError when an output class folder leads outside the output folder (a link):
    this tool writes only inside it."""
    for cls in sorted({PurePosixPath(name).parts[0] for name in names}):
        folder = output_dir / cls
        if safe_output_path(output_dir, f"{cls}/{cls}_0000.jpg") is None:
            raise UserError(f"output class folder '{folder}' leads outside the output folder "
                            f"'{output_dir}' (a link to '{folder.resolve()}'): prepare_dataset.py "
                            "writes only inside it; replace the link with a folder")
