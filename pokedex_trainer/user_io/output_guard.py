"""Folders the user names for reports and exports: the tool overwrites only its own files there.

A folder given with ``--output_dir`` (or a default one beside a loose model file) may already
hold the user's own ``report.md`` or ``exports.json``. The rule: a file there is overwritten only
when this tool can tell it wrote it, from the record it keeps in that folder
(``.pokedex_outputs.json``: each name it wrote and the SHA-256 of what it wrote). Any other file
with a name the command is about to write is refused, in one line, before any work. A name is
recorded as "being written" before the write starts, so a run killed halfway can be re-run into
the same folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from pokedex_trainer.errors import UserError
from pokedex_trainer.user_io.atomic import atomic_write_json
from pokedex_trainer.user_io.regular_files import file_sha256

RECORD = ".pokedex_outputs.json"
RECORD_FORMAT = 1
_WRITING = "writing"  # recorded before the write: the bytes are not known yet


def content_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's relative names and file bytes (a SavedModel)."""
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
            digest.update(item.relative_to(path).as_posix().encode("utf-8") + b"\0")
            digest.update(file_sha256(item).encode("ascii"))
        return "dir:" + digest.hexdigest()
    return file_sha256(path)




def _read_record(folder: Path) -> dict[str, str]:
    path = folder / RECORD
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text("utf-8"))
        files = data["files"]
        if data.get("format") != RECORD_FORMAT or not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError
        return files
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise UserError(f"'{path}' is not the record this tool keeps of the files it wrote "
                        "there, so no file of that folder is overwritten: choose another "
                        "output folder, or remove that file") from None


def claim_outputs(folder: Path, names: Iterable[str], option: str = "--output_dir") -> None:
    """Before any work: make sure every file ``names`` in ``folder`` may be (over)written.

    A name that does not exist yet, or that this tool recorded with the same bytes, is fine;
    anything else is the user's and ends the command with a UserError naming the files. The
    names are then recorded as being written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} '{folder}' is a file, not a folder")
    names = list(dict.fromkeys(names))
    record = _read_record(folder)
    foreign = []
    for name in names:
        path = folder / name
        if not (path.exists() or path.is_symlink()):
            continue
        recorded = record.get(name)
        if path.is_symlink() or recorded is None or (
                recorded != _WRITING and recorded != content_sha256(path)):
            foreign.append(name)
    if foreign:
        shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6
                                          else "")
        raise UserError(f"{option} '{folder}' already holds {shown}, which this tool did not "
                        "write (or which changed since): they are not overwritten; choose an "
                        "empty or new folder, or move those files away")
    folder.mkdir(parents=True, exist_ok=True)
    record.update({name: _WRITING for name in names})
    _write_record(folder, record)


def record_outputs(folder: Path, names: Iterable[str]) -> None:
    """After writing: remember the bytes of each of ``names`` now in ``folder`` as this tool's.
    A folder without a record (a run directory's own) is left without one."""
    folder = Path(folder)
    if not (folder / RECORD).exists():
        return
    record = _read_record(folder)
    for name in names:
        path = folder / name
        if path.exists() and not path.is_symlink():
            record[name] = content_sha256(path)
        else:
            record.pop(name, None)
    _write_record(folder, record)


def _write_record(folder: Path, files: dict[str, str]) -> None:
    atomic_write_json(folder / RECORD, {"format": RECORD_FORMAT, "files": files})
