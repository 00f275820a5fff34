"""Reading a file the user (or a stranger) handed us: only a regular file, of bounded size.

A named pipe blocks a reader forever, ``/dev/zero`` never ends and a link to either looks like
a file by its name: each file the tool reads is opened without blocking and checked with
``fstat`` on the open descriptor (not on the name, which can change meanwhile).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from pokedex_trainer.errors import UserError

JSON_LIMIT = 256 * 2**20  # a state, config or sidecar file is kilobytes; a huge one is not ours


def not_regular(path: Path | str) -> str | None:
    """Why ``path`` (links followed) is no regular file, or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISREG(mode):
        return None
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
            stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a folder" if stat.S_ISDIR(mode) else "not a regular file")
    return f"it is {kind}, not a regular file"


def read_regular(path: Path | str, limit: int | None = None) -> bytes:
    """The bytes of a regular file; OSError for anything else (a pipe, a device, a folder)
    or for a file over ``limit`` bytes, so callers report it as they report unreadable files."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"'{path}' is not a regular file (a pipe, a device or a folder)")
        if limit is not None and info.st_size > limit:
            raise OSError(f"'{path}' is {info.st_size / 2**20:.0f} MB, more than such a file "
                          f"can be ({limit / 2**20:.0f} MB)")
        chunks, left = [], info.st_size if limit is None else min(info.st_size, limit) + 1
        while True:
            chunk = os.read(fd, max(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            if limit is not None and sum(map(len, chunks)) > limit:
                raise OSError(f"'{path}' grew past {limit / 2**20:.0f} MB while it was read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular_text(path: Path | str, limit: int = JSON_LIMIT) -> str:
    """``read_regular`` decoded as UTF-8 (UnicodeDecodeError when it is not)."""
    return read_regular(path, limit).decode("utf-8")


def require_regular(path: Path | str, what: str = "model file") -> None:
    """UserError unless ``path`` is a regular file (links followed)."""
    problem = not_regular(path)
    if problem:
        raise UserError(f"cannot use '{path}' as a {what}: {problem}")


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
