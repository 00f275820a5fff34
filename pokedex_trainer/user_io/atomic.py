"""Files written whole or not at all (a temporary file, then a rename), and appends under a lock shared with other processes."""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from pokedex_trainer.errors import UserError

PARTIAL_DIR = ".partial"  # the hidden folder of half-written files, beside their target


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and prove it is writable; raises UserError otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to {what} '{path}': {exc.strerror or exc}") from None
    return path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` then rename: never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; the result is a normal file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8"))


@contextmanager
def atomic_target(path: Path, suffix: str):
    """Yield a temporary path (ending in ``suffix``) that replaces ``path`` on success.

    The temporary file lives in a hidden ``.partial`` folder beside ``path``, so a process
    killed mid-write leaves nothing that a lookup of model or export files could match.
    """
    path = Path(path)
    partial = path.parent / PARTIAL_DIR
    for attempt in range(3):  # another writer may remove the empty folder in between
        partial.mkdir(exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=partial, prefix=f"{path.stem}.", suffix=suffix)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        try:
            partial.rmdir()  # only when empty: another write may be in flight
        except OSError:
            pass


@contextmanager
def locked(handle):
    """Exclusive lock on an open file, on POSIX and on Windows."""
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                break
            except OSError:
                time.sleep(0.05)
        try:
            yield
        finally:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def locked_append(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` under the file lock (several processes may append)."""
    with open(path, "a", encoding="utf-8", newline="") as handle:
        with locked(handle):
            handle.seek(0, os.SEEK_END)
            handle.write(text)
            handle.flush()

