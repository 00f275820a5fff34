"""How each model file type is opened, decided in one place, so that no file runs code.

| file | opened with | safe for a file from a stranger |
| --- | --- | --- |
| ``.keras`` | ``keras.models.load_model`` in safe mode (no Lambda layers, no code) | yes |
| ``.pth`` | ``torch.load(weights_only=True)`` (tensors, numbers, strings only) | yes |
| ``.pt2`` | ``torch.export.load`` after this module checked the archive: every pickled entry must load with PyTorch's weights-only unpickler, custom and opaque objects are refused | yes |
| ``.onnx``, ``.tflite`` | ONNX Runtime, LiteRT: they run graphs of known operators, no Python | yes |
| ``.pt`` (TorchScript), SavedModel | code-bearing formats | only files this tool wrote: their SHA-256 is recorded when export.py writes them, in a store of this user's (``~/.pokedex_ultra/trusted_models.jsonl``); anything else needs ``--trust_model_file`` |

The trust store is the user's own, not a file next to the model: a stranger who sends a
TorchScript file can send a forged ``exports.json`` with it, never an entry in your store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path

from .errors import UserError

TRUST_STORE_ENV = "POKEDEX_TRUST_STORE"
CODE_BEARING = "TorchScript (.pt) and SavedModel files can run code when opened"


_VOUCHED: set[str] = set()  # files the user vouched for with --trust_model_file


def vouch_for(path: Path | str) -> None:
    """``--trust_model_file``: the user knows where this code-bearing file comes from."""
    _VOUCHED.add(str(Path(path).resolve()))


def trust_store_path() -> Path:
    """The user's record of the code-bearing files this tool wrote."""
    configured = os.environ.get(TRUST_STORE_ENV)
    return Path(configured) if configured else Path.home() / ".pokedex_ultra" / \
        "trusted_models.jsonl"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files and their relative names (a SavedModel)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_code_bearing(path: Path) -> bool:
    path = Path(path)
    return path.suffix.lower() == ".pt" or (path.is_dir() and
                                            (path / "saved_model.pb").is_file())


def remember_written(path: Path) -> str:
    """Record a code-bearing file this tool has just written and checked; returns its hash."""
    from .records import locked_append

    digest = file_sha256(path)
    store = trust_store_path()
    store.parent.mkdir(parents=True, exist_ok=True)
    locked_append(store, json.dumps({"sha256": digest, "path": str(Path(path).resolve()),
                                     "date": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
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


def check_can_open(path: Path, trust: bool = False) -> None:
    """Raise UserError unless ``path`` can be opened without running code from it.

    Args:
        path: a model file or SavedModel folder.
        trust: the user vouches for the file (``--trust_model_file``).
    """
    path = Path(path)
    if path.suffix.lower() == ".pt2":
        validate_pt2(path)
    elif is_code_bearing(path) and not (trust or str(path.resolve()) in _VOUCHED) and \
            file_sha256(path) not in _trusted_hashes():
        raise UserError(f"refused to open '{path}': {CODE_BEARING}, and this one was not "
                        "written by export.py for this user (or it changed since). Use the "
                        ".onnx, .tflite, .pt2 or .pth file instead, or pass --trust_model_file "
                        "if you know where it comes from")


def validate_pt2(path: Path) -> None:
    """Check a ``torch.export`` archive before ``torch.export.load`` unpickles parts of it.

    PyTorch loads pickled weights and constants with ``weights_only=False``, custom objects
    with its own unpickler and sample inputs with a fallback to ``weights_only=False``: any of
    them can run code. Every such entry must load with the weights-only unpickler here;
    custom and opaque objects are refused.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            _validate_archive(archive, path)
    except zipfile.BadZipFile:
        raise UserError(f"'{path}' is not a torch.export archive (not a zip file)") from None


def _validate_archive(archive: zipfile.ZipFile, path: Path) -> None:
    names = archive.namelist()
    configs = [n for n in names if n.endswith(("/model_weights_config.json",
                                               "/model_constants_config.json"))]
    if not configs:
        raise UserError(f"refused to open '{path}': not a torch.export archive of a known "
                        "layout (no weights configuration)")
    for config_name in configs:
        folder = config_name.rsplit("/", 1)[0]
        try:
            config = json.loads(archive.read(config_name))["config"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"refused to open '{path}': unreadable {config_name}") from None
        for name, meta in config.items():
            entry = f"{folder}/{meta.get('path_name', '')}"
            kind = meta.get("path_name", "")
            if kind.startswith(("custom_obj", "opaque_obj")):
                _refuse_pt2(path, f"{name} is a pickled Python object")
            if meta.get("use_pickle"):
                _weights_only(archive, entry, path)
    for name in names:
        if "/data/sample_inputs/" in name:
            _weights_only(archive, name, path)


def _weights_only(archive: zipfile.ZipFile, entry: str, path: Path) -> None:
    import torch

    try:
        torch.load(io.BytesIO(archive.read(entry)), map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure of the weights-only unpickler: refuse
        _refuse_pt2(path, f"{entry.split('/', 1)[-1]} holds more than tensors "
                          f"({type(exc).__name__})")


def _refuse_pt2(path: Path, why: str) -> None:
    raise UserError(f"refused to open '{path}': {why}; loading it could run code")
