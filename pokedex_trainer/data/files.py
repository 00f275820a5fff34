"""Which files and folders of a photo collection count: image extensions, system and hidden
names, links that loop. Shared by the scan (scan.py) and the archive finder (archives.py),
so neither imports the other for them."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png"}
SYSTEM_NAMES = {"__macosx", "$recycle.bin", "system volume information", "@eadir", "thumbs.db",
                "desktop.ini", ".ds_store"}


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name.lower() in SYSTEM_NAMES


def is_image_file(path: Path) -> bool:
    """A visible, regular file with a .jpg/.jpeg/.png extension in any letter case."""
    return path.is_file() and not _is_hidden(path) and path.suffix.lower() in IMAGE_EXTENSIONS


def is_loop_link(path: Path | str) -> bool:
    """True for a link to the folder that holds it or to one of that folder's parents: reading
    through it reads the same folders again, and a walk through it never ends."""
    if not os.path.islink(path):
        return False
    target = os.path.realpath(path)
    holder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    return holder == target or holder.startswith(target.rstrip(os.sep) + os.sep)
