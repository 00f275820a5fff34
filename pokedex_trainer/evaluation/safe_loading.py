"""How each model file type is opened, decided in one place, so that no file runs code.

| file | opened with | safe for a file from a stranger |
| --- | --- | --- |
| ``.keras`` | ``keras.models.load_model`` in safe mode (no Lambda layers, no code) | yes |
| ``.pth`` | ``torch.load(weights_only=True)`` (tensors, numbers, strings only) | yes |
| ``.pt2`` | ``torch.export.load`` of the bytes that passed evaluation/pt2_check.py's allow-list (one plain program, raw tensors, weights-only sample inputs, ATen operators, plain shape expressions, no guard code) | yes |
| ``.onnx``, ``.tflite`` | ONNX Runtime, LiteRT: they run graphs of known operators, no Python | yes |
| ``.pt`` (TorchScript), SavedModel (any folder with ``saved_model.pb`` or ``.pbtxt``, whatever its name) | code-bearing formats, loaded from the bytes (or private copy) that were hashed | only files this tool wrote: their SHA-256 is recorded when export.py writes them, in a store of this user's (``~/.pokedex_ultra/trusted_models.jsonl``); anything else needs ``--trust_model_file`` |

The trust store is the user's own, not a file next to the model: a stranger who sends a
TorchScript file can send a forged ``exports.json`` with it, never an entry in your store.
Any other folder is refused: a folder never reaches a loader because of its name's suffix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from pokedex_trainer.errors import UserError
from pokedex_trainer.user_io.regular_files import file_sha256

TRUST_STORE_ENV = "POKEDEX_TRUST_STORE"
CODE_BEARING = "TorchScript (.pt) and SavedModel files can run code when opened"


_VOUCHED: set[str] = set()  # files the user vouched for with --trust_model_file


def vouch_for(path: Path | str) -> None:
    """``--trust_model_file``: the user knows where this code-bearing file comes from."""
    _VOUCHED.add(str(Path(path).resolve()))


def trust_store_path() -> Path:
    """The user's record of the code-bearing files this tool wrote."""
    from pokedex_trainer.user_io.env_values import env_path

    configured = env_path(TRUST_STORE_ENV)
    return configured or Path.home() / ".pokedex_ultra" / "trusted_models.jsonl"


def is_saved_model(path: Path) -> bool:
    """A folder TensorFlow loads as a SavedModel (binary or text graph), whatever its name."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file()
                                 for name in ("saved_model.pb", "saved_model.pbtxt"))


def is_code_bearing(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() or path.suffix.lower() == ".pt"


def check_trust_store() -> Path:
    """Before an export writes a code-bearing file: the trust store is this tool's (absent, or
    only its JSON lines) and can take a line. UserError naming it otherwise: a file of the
    user's that ``POKEDEX_TRUST_STORE`` points at never gets a line appended."""
    store = trust_store_path()
    if store.exists() or store.is_symlink():
        try:
            text = store.read_text(encoding="utf-8") if store.is_file() else None
        except (OSError, UnicodeDecodeError):
            text = None
        lines = [] if text is None else [line for line in text.splitlines() if line.strip()]
        if text is None or not all(_is_trust_entry(line) for line in lines):
            raise UserError(f"the trust store '{store}' ({TRUST_STORE_ENV}) is not this tool's "
                            "record of the files it wrote, so nothing is added to it: point "
                            f"{TRUST_STORE_ENV} at a new file")
        if not os.access(store, os.W_OK):
            raise UserError(f"the trust store '{store}' ({TRUST_STORE_ENV}) cannot be written: "
                            "TorchScript and SavedModel exports are recorded there")
    else:
        parent = next((p for p in store.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"the trust store '{store}' ({TRUST_STORE_ENV}) cannot be created: "
                            "TorchScript and SavedModel exports are recorded there")
    return store


def _is_trust_entry(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and isinstance(entry.get("sha256"), str)


def remember_written(path: Path) -> str:
    """Record a code-bearing file this tool has just written and checked; returns its hash."""
    from pokedex_trainer.user_io.atomic import locked_append

    digest = file_sha256(path)
    store = check_trust_store()
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        locked_append(store, json.dumps({"sha256": digest, "path": str(Path(path).resolve()),
                                         "date": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    except OSError as exc:
        raise UserError(f"the trust store '{store}' ({TRUST_STORE_ENV}) cannot be written: "
                        f"{exc.strerror or exc}") from None
    return digest


def _trusted_hashes() -> set[str]:
    store = trust_store_path()
    if not store.is_file():
        return set()
    hashes = set()
    for line in store.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            hashes.add(json.loads(line)["sha256"])
        except (ValueError, KeyError, TypeError):
            continue
    return hashes


@dataclass
class CheckedModel:
    """What a loader may read: the exact bytes, or the private copy, that passed the check.

    A path is checked once and read once: a file swapped after the check (while a framework is
    imported, for seconds) is never what gets loaded.

    Args:
        path: the model as the user named it (for messages).
        data: the file's checked bytes (TorchScript, torch.export), to load from memory.
        folder: a checked copy of a SavedModel in a folder only this user can write, removed
            when the CheckedModel is garbage collected or the process ends.
    """

    path: Path
    data: bytes | None = None
    folder: Path | None = None


def check_can_open(path: Path, trust: bool = False) -> CheckedModel:
    """Raise UserError unless ``path`` can be opened without running code from it; return
    what the loader must read (see CheckedModel).

    Args:
        path: a model file or SavedModel folder.
        trust: the user vouches for the file (``--trust_model_file``).
    """
    path = Path(path)
    trusted = trust or str(path.resolve()) in _VOUCHED
    if path.is_dir():
        if not is_saved_model(path):
            raise UserError(f"'{path}' is a folder but not a SavedModel (no saved_model.pb): "
                            "give a model file")
        return _checked_saved_model(path, trusted)
    from pokedex_trainer.user_io.regular_files import require_regular

    require_regular(path)  # a pipe or a device would block or never end in any loader
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        from pokedex_trainer.evaluation.pt2_check import checked_pt2_bytes

        return CheckedModel(path, data=checked_pt2_bytes(path))
    if suffix == ".pt":
        data = _read(path)
        if not trusted and hashlib.sha256(data).hexdigest() not in _trusted_hashes():
            _refuse_untrusted(path)
        return CheckedModel(path, data=data)
    return CheckedModel(path)


def _read(path: Path) -> bytes:
    try:
        from pokedex_trainer.user_io.regular_files import read_regular

        return read_regular(path)
    except OSError as exc:
        raise UserError(f"could not read '{path}': {exc.strerror or exc}") from None


def _refuse_untrusted(path: Path) -> None:
    raise UserError(f"refused to open '{path}': {CODE_BEARING}, and this one was not "
                    "written by export.py for this user (or it changed since). Use the "
                    ".onnx, .tflite, .pt2 or .pth file instead, or pass --trust_model_file "
                    "if you know where it comes from")


def _only_plain_files(folder: Path) -> None:
    """UserError unless ``folder`` holds only folders and regular files (no link, pipe or
    device): a SavedModel is what TensorFlow wrote, nothing else."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            entry = Path(root) / name
            mode = entry.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UserError(f"refused to open the SavedModel '{folder}': "
                                f"'{entry.relative_to(folder)}' is a link or a special file, "
                                "which TensorFlow never writes")


def _checked_saved_model(path: Path, trusted: bool) -> CheckedModel:
    """Copy the SavedModel into a new folder of this user's (mkdtemp: mode 0700), hash the
    copy, and hand the copy to TensorFlow: the folder the user named may change meanwhile."""
    private = Path(tempfile.mkdtemp(prefix="pokedex_savedmodel_"))
    copy = private / "model"
    try:
        _only_plain_files(path)
        # links are copied as links and refused by the second look: a link to /dev/zero
        # would otherwise fill the disk, and one to a private file would leak it into a model
        shutil.copytree(path, copy, symlinks=True)
        _only_plain_files(copy)
        if not is_saved_model(copy):
            raise UserError(f"'{path}' changed while it was read")
        if not trusted and file_sha256(copy) not in _trusted_hashes():
            _refuse_untrusted(path)
    except (OSError, shutil.Error) as exc:
        shutil.rmtree(private, ignore_errors=True)
        raise UserError(f"could not read the SavedModel '{path}': {exc}") from None
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    checked = CheckedModel(path, folder=copy)
    weakref.finalize(checked, shutil.rmtree, str(private), True)
    return checked

